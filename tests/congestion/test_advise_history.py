"""History streaming and the advise model on histories whose answer is known in closed form."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.congestion import history
from kvmkit.congestion.advise import advise
from kvmkit.congestion.model import HostReport, IntervalReport, ThreadGroupReport, VcpuReport, VmReport
from kvmkit.errors import InvalidInput, NotFound


def _report(t: float, vcpus: int, pcpus: int, run_pct: float, wait_pct: float) -> IntervalReport:
    group = ThreadGroupReport()
    rows = [VcpuReport(vcpu=i, tid=i, utilisation_pct=run_pct, congestion_pct=wait_pct) for i in range(vcpus)]
    vm = VmReport(domain="vm", pid=1, vcpus_allocated=vcpus, utilisation_pct=run_pct, congestion_pct=wait_pct,
                  congestion_max_pct=wait_pct, vcpus=rows, emulator=group, iothreads=group, vhost=group)  # fmt: skip
    host = HostReport(pcpus=pcpus, vcpus_allocated=vcpus, oversubscription=vcpus / pcpus,
                      vcpu_demand=vcpus * (run_pct + wait_pct) / 100, vcpu_load_pct=vcpus * run_pct / pcpus,
                      congestion_pct=wait_pct, congestion_p95_pct=wait_pct, psi_some_avg10=None,
                      psi_full_avg10=None, psi_some_pct=None)  # fmt: skip
    return IntervalReport(time=t, interval_s=1, host=host, vms=[vm])


def test_fluid_model_reproduces_k_over_one_core():
    # 1 always-runnable vCPU per CPU, no congestion: at R vCPUs per CPU each waits 1 - 1/R.
    recorded = [_report(t, 2, 2, 100, 0) for t in range(50)]
    result = advise(recorded, slo_congestion_pct=50)
    assert result.max_oversubscription == 2.0  # 1 - 1/2 = 50 %
    predicted = {p.oversubscription: p.congestion_pct for p in result.predictions}
    assert predicted[4.0] == pytest.approx(75, abs=0.1) and predicted[1.0] == 0


def test_half_busy_vcpus_allow_about_twice_the_ratio():
    # demand 0.5 per vCPU: congestion max(0, 0.5 - 1/R) <= 5 %  ⇔  R <= 1/0.45 = 2.22
    result = advise([_report(t, 4, 4, 50, 0) for t in range(100)], slo_congestion_pct=5)
    assert result.max_oversubscription == 2.2
    assert result.observed_oversubscription == 1 and result.mean_vcpu_demand_pct == 50


def test_load_outside_qemu_and_steal_shrink_the_capacity_left_for_vms():
    # half of each CPU taken by other load and steal: max(0, 0.5 - 0.5/R) <= 5 %  ⇔  R <= 0.5/0.45 = 1.11
    busy_host = []
    for t in range(100):
        report = _report(t, 4, 4, 50, 0)
        report.host.other_load_pct, report.host.steal_pct = 30.0, 20.0
        busy_host.append(report)
    result = advise(busy_host, slo_congestion_pct=5)
    assert result.max_oversubscription == 1.1 and result.mean_capacity_pct == 50


def test_measured_burst_congestion_counts_against_the_slo():
    # 3 % congestion measured at ratio 1 with no saturation: residual 3 %, grows ∝ R → 5 % at R ≈ 1.65
    result = advise([_report(t, 4, 4, 20, 3) for t in range(100)], slo_congestion_pct=5)
    assert result.max_oversubscription == pytest.approx(1.65, abs=0.05)
    # 30 % measured at ratio 1 leaves 7.5 % even at 0.25 vCPUs per CPU: no ratio keeps 5 %
    assert advise([_report(0, 4, 4, 20, 30)], slo_congestion_pct=5).max_oversubscription is None


def test_the_percentile_ignores_rare_spikes():
    quiet = [_report(t, 2, 2, 10, 0) for t in range(97)]
    spikes = [_report(100 + t, 2, 2, 100, 50) for t in range(3)]
    assert (
        advise(quiet + spikes, 5, percentile=95).max_oversubscription
        > advise(quiet + spikes, 5, 99).max_oversubscription
    )


def test_bad_inputs_are_refused():
    with pytest.raises(InvalidInput, match="no interval"):
        advise([], 5)
    with pytest.raises(InvalidInput, match="SLO"):
        advise([_report(0, 1, 1, 1, 0)], 0)


def test_history_round_trip_window_and_bad_lines(tmp_path: Path):
    path = tmp_path / "h.jsonl"
    with history.HistoryWriter(path) as writer:
        for t in range(5):
            writer.append(_report(1000 + t, 1, 1, 10, 1))
    assert [r.time for r in history.stream(path)] == [1000, 1001, 1002, 1003, 1004]
    assert history.last_time(path) == 1004
    assert [r.time for r in history.stream(path, since=1003)] == [1003, 1004]
    with path.open("a") as f:
        f.write('{"not": "a report"}\n')
    with pytest.raises(InvalidInput, match=r"h.jsonl:6: not a congestion report"):
        list(history.stream(path))
    with pytest.raises(NotFound):
        list(history.stream(tmp_path / "absent"))
