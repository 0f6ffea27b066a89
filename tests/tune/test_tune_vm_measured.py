"""`tune vm --history`: what a congestion history measured, summed per VM in fixed memory, and the pinning check
that shows it and gets one step more severe for a VM that waited beyond the latency SLO."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from tests.tune.test_tune_vm_judge import TWO_NODES, by_check, domain

from kvmkit.congestion.model import HostReport, IntervalReport, ThreadGroupReport, VcpuReport, VmReport
from kvmkit.tune.model import Status
from kvmkit.tune.vm.judge import judge
from kvmkit.tune.vm.measured import CONTENDED_P95_PCT, Contention, summarize


def _vm(name: str, contention: float) -> VmReport:
    group = ThreadGroupReport()
    row = VcpuReport(vcpu=0, tid=1, utilisation_pct=50, congestion_pct=contention, contention_pct=contention)
    return VmReport(domain=name, pid=1, vcpus_allocated=1, utilisation_pct=50, congestion_pct=contention,
                    congestion_max_pct=contention, vcpus=[row], contention_pct=contention, emulator=group,
                    iothreads=group, vhost=group)


def _report(t: float, vms: list[VmReport]) -> IntervalReport:
    host = HostReport(pcpus=2, vcpus_allocated=2, oversubscription=1, vcpu_demand=1, vcpu_load_pct=50,
                      congestion_pct=1, congestion_p95_pct=1, psi_some_avg10=None, psi_full_avg10=None,
                      psi_some_pct=None)
    return IntervalReport(time=t, interval_s=1, host=host, vms=vms)


def test_each_named_vm_gets_its_mean_p95_and_max_and_others_are_left_out():
    # web1: 1..100 % over 100 intervals → p95 95 %; db1: always 0.5 %; cache1 is not asked for
    reports = [_report(t, [_vm("web1", t), _vm("db1", 0.5), _vm("cache1", 80)]) for t in range(1, 101)]
    out = summarize(reports, {"web1", "db1", "ghost"})
    assert out == {"web1": Contention(100, 50.5, 95.0, 100.0), "db1": Contention(100, 0.5, 0.5, 0.5)}
    assert out["web1"].contended and not out["db1"].contended


def test_a_contended_vm_makes_pinning_one_step_more_severe_and_shows_the_figure():
    xml = domain(vcpus=2)
    hot = dataclasses.replace(TWO_NODES, contention={"web1": Contention(60, 4.0, 9.5, 20.0)})
    calm = dataclasses.replace(TWO_NODES, contention={"web1": Contention(60, 0.2, 0.5, 1.0)})
    assert "cpu.pinning" not in by_check(judge(xml, TWO_NODES, "throughput"))  # not judged without evidence
    warned = by_check(judge(xml, hot, "throughput"))["cpu.pinning"]
    assert warned.status == Status.WARN and "contention p95 9.5 %" in warned.current
    assert f"above the {CONTENDED_P95_PCT:g} %" in warned.why
    assert by_check(judge(xml, hot, "per-core"))["cpu.pinning"].status == Status.FAIL  # W → F
    assert by_check(judge(xml, calm, "per-core"))["cpu.pinning"].status == Status.WARN  # unchanged
    assert "contention p95 0.5 %" in by_check(judge(xml, calm, "latency"))["cpu.pinning"].current


def test_a_bad_history_is_one_line_and_exit_2(tmp_path: Path):
    history = tmp_path / "h.jsonl"
    history.write_text(json.dumps({"time": 1}) + "\n")
    out = subprocess.run([sys.executable, "-m", "kvmkit", "tune", "vm", "test", "--history", str(history),
                          "--connect", "test:///default"], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not a congestion report" in out.stderr, out.stderr
