"""The SNIA steady-state detector on synthetic series: flat, trending, noisy, settling."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmkit.bench.steady import check_window, first_steady_window, latest_window


def test_flat_series_is_steady_at_the_first_full_window():
    found = first_steady_window([1000.0] * 8)
    assert found is not None and found.start == 0
    assert found.range_frac == 0 and found.slope_frac == 0


def test_fewer_rounds_than_the_window_is_never_steady():
    assert first_steady_window([1000.0] * 4) is None
    assert latest_window([1000.0] * 4) is None


def test_trend_within_range_but_over_slope_is_not_steady():
    # +4 % per round: range 16 % (passes ≤ 20 %) but the fitted line moves 16 % (fails ≤ 10 %).
    series = [1000 * (1 + 0.04 * i) for i in range(12)]
    assert first_steady_window(series) is None
    last = latest_window(series)
    assert last is not None and last.range_frac <= 0.20 and last.slope_frac > 0.10


def test_sawtooth_with_flat_trend_but_wide_range_is_not_steady():
    series = [1000, 1300, 1000, 1300, 1000, 1300, 1000]  # slope ≈ 0, range ≈ 26 % of average
    check = check_window(series[:5])
    assert check.slope_frac < 0.10 and check.range_frac > 0.20
    assert first_steady_window(series) is None


def test_noisy_series_within_bounds_is_steady_and_beyond_bounds_is_not():
    rng = random.Random(7)
    calm = [10_000 * (1 + rng.uniform(-0.04, 0.04)) for _ in range(10)]
    wild = [10_000 * (1 + rng.uniform(-0.4, 0.4)) for _ in range(10)]
    assert first_steady_window(calm) is not None
    assert first_steady_window(wild) is None


def test_settling_series_reports_the_round_where_the_plateau_starts_counting():
    # Fresh-out-of-box decay: high IOPS that fall, then flatten from round 6 (index 5).
    series = [5000, 3500, 2500, 2000, 1700, 1500, 1510, 1495, 1505, 1500, 1498]
    found = first_steady_window(series)
    assert found is not None
    assert 4 <= found.start <= 6
    assert all(v <= 1700 for v in series[found.start : found.start + 5])


def test_zero_window_is_broken_not_steady():
    assert not check_window([0.0] * 5).steady


def test_window_needs_two_points():
    with pytest.raises(ValueError):
        check_window([1.0])


@given(st.floats(min_value=1e-3, max_value=1e9), st.integers(min_value=5, max_value=30))
def test_any_constant_positive_series_is_steady(value: float, n: int):
    assert first_steady_window([value] * n) is not None


@given(
    st.lists(st.floats(min_value=1, max_value=1e6), min_size=5, max_size=5),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_criteria_do_not_depend_on_units(values: list[float], scale: float):
    a, b = check_window(values), check_window([v * scale for v in values])
    assert math.isclose(a.range_frac, b.range_frac, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(a.slope_frac, b.slope_frac, rel_tol=1e-9, abs_tol=1e-9)
    assert a.steady == b.steady or abs(a.range_frac - 0.2) < 1e-9 or abs(a.slope_frac - 0.1) < 1e-9


def _drive_snia(iops_per_round: list[float], max_rounds: int, matrix: str = "tracking"):
    """Feed the (pure) snia program synthetic round results; return the outcome and the rounds it asked for."""
    from kvmkit.bench.schema import DirectionResult, JobResult, Percentiles
    from kvmkit.bench.suites import Purge, SuiteContext, snia

    def result(name: str, phase: str, iops: float) -> JobResult:
        direction = DirectionResult(
            iops=iops, bw_bytes=iops * 4096, ios=int(iops), latency=Percentiles(mean=1.0, max=2.0)
        )
        return JobResult(
            name=name,
            phase=phase,
            rw="randrw",
            bs=4096,
            iodepth=32,
            runtime_s=1.0,
            write=direction,
            usr_cpu_pct=1.0,
            sys_cpu_pct=1.0,
        )

    program = snia(SuiteContext("/srv/t.dat", "file", 1 << 30, max_rounds=max_rounds, snia_matrix=matrix))
    rounds, step = 0, next(program)
    try:
        while True:
            if isinstance(step, Purge) or step.jobs[0].phase == "precondition":
                step = program.send([])
                continue
            value = iops_per_round[rounds]
            rounds += 1
            step = program.send([result(j.name, j.phase, value) for j in step.jobs])
    except StopIteration as stop:
        return stop.value, rounds


def test_snia_stops_at_the_first_steady_round_and_reports_it():
    outcome, rounds = _drive_snia([9000, 6000, 4000, 3000, 2000, 2000, 2010, 1990, 2000, 2000, 2000], 25)
    assert rounds == 9 and outcome.steady_state.reached and outcome.steady_state.round == 9
    assert outcome.steady_state.window == [2000, 2000, 2010, 1990, 2000]
    (cell,) = outcome.steady_state.cells
    assert cell.cell == "4k-w100" and cell.iops == pytest.approx(2000.0)
    assert not outcome.warnings


def test_snia_gives_up_at_max_rounds_and_says_so():
    outcome, rounds = _drive_snia([1000 * (1 + 0.3 * (i % 2)) for i in range(10)], 8)
    assert rounds == 8 and not outcome.steady_state.reached and outcome.steady_state.round is None
    assert outcome.steady_state.range_pct > 20
    assert any("no steady state within 8 rounds" in w for w in outcome.warnings)


def test_snia_reduced_matrix_reports_every_cell_over_the_window():
    outcome, rounds = _drive_snia([1000.0] * 5, 25, matrix="reduced")
    assert rounds == 5 and outcome.steady_state.round == 5
    cells = {c.cell for c in outcome.steady_state.cells}
    assert cells == {f"{bs}k-w{w}" for bs in (4, 64) for w in (100, 65, 0)}
