"""Fakes for what cannot run on these machines (a StorPool cluster). Each is named as a fake everywhere."""
