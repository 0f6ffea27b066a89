"""This process's peak resident memory, which every benchmark prints next to its time.

getrusage's high-water mark covers the whole run, so a bench that streams (disks, samples, fleets) shows here
whether its memory stayed bounded. Children are measured separately where they matter (bench.spawn, benchmarks.backup).
"""

from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
