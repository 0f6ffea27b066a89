"""The memory family in the exporter (over real HTTP, with the congestion family beside it, as `kvmkit serve`
runs it), and the shipped Grafana dashboard and Prometheus rules: only served metrics, promtool-checked."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvmkit.benchmarks import memory_synth
from kvmkit.benchmarks.realqemu import available, spinning_guests
from kvmkit.congestion import exporter
from kvmkit.congestion.procfs import ProcReader
from kvmkit.memory.balloon import balloon_reading
from kvmkit.memory.exporter import MemoryCollector
from kvmkit.memory.procfs import MemReader

yaml = pytest.importorskip("yaml", reason="PyYAML (Debian python3-yaml) reads the Prometheus rules")

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "kvmkit-memory-rules.yaml"
DASHBOARD = CONTRIB / "grafana" / "kvmkit-memory.json"
METRIC = re.compile(r"\bkvmkit_[a-z0-9_]+")


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.skipif(not available(), reason="qemu-system-x86_64 not installed")
def test_one_exporter_serves_both_families_for_a_real_qemu():
    with spinning_guests(1, 0, prefix="memexp") as (pid,):
        memory = MemReader(pids=[pid])
        collectors = [exporter.CongestionCollector(ProcReader(pids=[pid])), MemoryCollector(memory)]
        server, thread = exporter.start("127.0.0.1", 0, collectors=collectors)
        before = _vm_rss(pid)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read().decode()
            conn.close()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
        after = _vm_rss(pid)
    samples = _samples(body)
    vm = (("vm", "memexp-0"),)
    # the guest is still booting and its RSS moves both ways (the 2 % truth is a lab test, on a settled guest)
    assert 0.85 * min(before, after) <= samples[("kvmkit_vm_rss_bytes", vm)] <= 1.15 * max(before, after)
    assert samples[("kvmkit_vm_memory_configured_bytes", vm)] == 32 << 20
    assert ("kvmkit_vm_major_faults_total", vm) in samples
    assert ("kvmkit_vcpu_run_seconds_total", (("vcpu", "0"), ("vm", "memexp-0"))) in samples  # congestion too
    assert samples[("kvmkit_host_memory_bytes", (("kind", "total"),))] > 0
    assert samples[("kvmkit_memory_unavailable", (("field", "balloon_bytes"),))] == 1  # no libvirt asked


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024


def _served_names(tmp_path: Path) -> set[str]:
    """Every family a fully equipped host serves: a synthetic cgroup-v2 tree with swap and KSM, and balloons."""
    host = memory_synth.build(tmp_path, 2, layout="v2", swap=True)
    stats = {"balloon.current": 1 << 20, "balloon.usable": 1 << 19, "balloon.last-update": 1}
    balloons = {vm.domain: balloon_reading(stats, True) for vm in host.vms}
    registry = CollectorRegistry()
    registry.register(MemoryCollector(MemReader(proc=host.proc, sys=host.sys, balloons=lambda: balloons)))
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def _exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_memory_rules_and_dashboard_use_only_served_metrics(tmp_path: Path):
    served = _served_names(tmp_path)
    used = {name for expr in _exprs() for name in METRIC.findall(expr)}
    assert {"kvmkit_vm_memory_pressure_seconds_total", "kvmkit_vm_swap_in_bytes_total", "kvmkit_vm_oom_kills_total",
            "kvmkit_ksmd_cpu_seconds_total"} <= used  # the four: pressure, swap-in, OOM, KSM CPU
    assert used <= served, f"not served: {sorted(used - served)}"


def test_memory_dashboard_panels_have_unique_ids_and_the_variables():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {"datasource", "instance", "vm"} <= {v["name"] for v in dashboard["templating"]["list"]}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_memory_rules_and_their_unit_tests_pass():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", RULES.with_suffix(".test.yaml").name],
                          cwd=RULES.parent, capture_output=True, text=True)  # fmt: skip
    assert unit.returncode == 0, unit.stdout + unit.stderr
