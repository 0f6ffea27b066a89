"""The paths bench's policy for a stalled guest: by default a failed row; with --stall-retries, fresh VMs, counted.

The VM runs themselves are real in test_bench_vm_live.py; a stall cannot be provoked here in reasonable time
(fio's deadline is two minutes and more), so these tests hand the policy real fio results marked the way a stall
and an ordinary failure mark them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.bench.engine import BenchOptions
from kvmkit.benchmarks import paths

STALL = "VM tlab-paths: fio did not finish within 147 s"
VARIANT = paths.VARIANTS[1]


def _failed(run, error: str):
    return run.model_copy(update={"status": "failed", "error": error, "warnings": ["stalled guest: ps output"]})


@pytest.fixture
def measure(monkeypatch, quick_run):
    def with_results(*results, retries=1):
        queue = list(results)
        calls = []

        def fake_in_guest(state, uri, variant, backing, opts):
            calls.append(variant.name)
            return queue.pop(0)

        monkeypatch.setattr(paths, "_in_guest", fake_in_guest)
        said: list[str] = []
        run, attempts = paths._measure_in_guest(None, "qemu:///system", VARIANT, Path("/nonexistent"),
                                                BenchOptions(), said.append, retries)
        return run, attempts, calls, said
    return with_results


def test_a_stall_is_measured_once_more_and_the_row_says_so(measure, quick_run):
    run, attempts, calls, said = measure(_failed(quick_run, STALL), quick_run)
    assert run.status == "ok" and attempts == 2 and len(calls) == 2
    assert f"attempt 1 failed: {STALL}" in run.warnings and "attempt 1: stalled guest: ps output" in run.warnings
    assert "stalled" in said[0]
    row = paths._row(run, quick_run, attempts)
    assert row.attempts == 2 and row.vs_host_randread == 1.0


def test_more_stalls_than_retries_are_a_failure_not_another_try(measure, quick_run):
    run, attempts, calls, _ = measure(_failed(quick_run, STALL), _failed(quick_run, STALL))
    assert run.status == "failed" and attempts == 2 and len(calls) == 2
    assert f"attempt 1 failed: {STALL}" in run.warnings


def test_by_default_a_stall_is_a_failed_row_with_what_the_guest_showed(measure, quick_run):
    run, attempts, calls, said = measure(_failed(quick_run, STALL), retries=0)
    assert run.status == "failed" and attempts == 1 and len(calls) == 1 and said == []
    assert "stalled guest: ps output" in run.warnings


def test_two_retries_allow_a_third_vm(measure, quick_run):
    run, attempts, calls, _ = measure(_failed(quick_run, STALL), _failed(quick_run, STALL), quick_run, retries=2)
    assert run.status == "ok" and attempts == 3 and len(calls) == 3
    assert [w for w in run.warnings if "failed" in w] == [f"attempt 1 failed: {STALL}", f"attempt 2 failed: {STALL}"]


def test_stall_retries_out_of_range_is_one_clear_error(tmp_path):
    from kvmkit.errors import InvalidInput

    with pytest.raises(InvalidInput, match="--stall-retries 7: give 0 to 3"):
        paths.run(tmp_path, "qemu:///system", stall_retries=7)


def test_an_ordinary_failure_is_not_retried(measure, quick_run):
    run, attempts, calls, said = measure(_failed(quick_run, "fio failed: No space left on device"))
    assert run.status == "failed" and attempts == 1 and len(calls) == 1 and said == []
