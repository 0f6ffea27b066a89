"""Test doubles, each named as a fake: stand-ins for what a unit test must not need (a lab, a watchdog
process) and for what cannot run on these machines (a StorPool cluster)."""
