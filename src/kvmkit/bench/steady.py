"""SNIA SSS PTS steady-state detection: pure arithmetic over a series of per-round measurements.

The PTS rule (v2.0.x, section 2.1.20): over a measurement window of 5 consecutive rounds of the tracking
variable, (1) the data excursion max−min is ≤ 20 % of the window average and (2) the excursion of the
least-squares best-fit line across the window, |slope| × (n−1), is ≤ 10 % of the window average.
Both matter: a slow drift passes (1) and a saw-tooth passes (2). Kept free of I/O so it is tested on
synthetic series and reused unchanged for in-guest runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WINDOW = 5
MAX_RANGE = 0.20
MAX_SLOPE = 0.10


@dataclass(frozen=True)
class WindowCheck:
    start: int  # 0-based index of the window's first round
    average: float
    range_frac: float
    slope_frac: float

    @property
    def steady(self) -> bool:
        return self.range_frac <= MAX_RANGE and self.slope_frac <= MAX_SLOPE


def check_window(values: Sequence[float], start: int = 0) -> WindowCheck:
    """Range and slope excursions of one window, as fractions of its average."""
    n = len(values)
    if n < 2:
        raise ValueError("a steady-state window needs at least 2 rounds")
    average = sum(values) / n
    if average <= 0:
        # A window of zeros (no I/O completed) is not "steady", it is broken.
        return WindowCheck(start, average, float("inf"), float("inf"))
    x_mean = (n - 1) / 2
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    slope = sum((i - x_mean) * (v - average) for i, v in enumerate(values)) / sxx
    return WindowCheck(
        start=start,
        average=average,
        range_frac=(max(values) - min(values)) / average,
        slope_frac=abs(slope) * (n - 1) / average,
    )


def first_steady_window(series: Sequence[float], window: int = WINDOW) -> WindowCheck | None:
    """The earliest window that meets both criteria, or None. The steady-state round is its last one."""
    for start in range(0, len(series) - window + 1):
        check = check_window(series[start : start + window], start)
        if check.steady:
            return check
    return None


def latest_window(series: Sequence[float], window: int = WINDOW) -> WindowCheck | None:
    """The last full window, to report how far from steady a run that never got there ended."""
    if len(series) < window:
        return None
    return check_window(series[-window:], len(series) - window)
