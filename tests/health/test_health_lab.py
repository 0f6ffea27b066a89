"""Health metrics end to end on the lab: real snapshot commands (one good, one on a VM whose agent is stopped),
then a real scrape of the exporter over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doctor.test_doctor_lab import silent_vm

pytestmark = pytest.mark.lab


def test_exporter_serves_the_last_snapshot_and_a_failure_by_reason(lab_state, tmp_path, monkeypatch):
    from kvmkit.congestion import exporter

    state_dir = tmp_path / "state"
    env = {**os.environ, "KVMKIT_STATE_DIR": str(state_dir), "KVMKIT_LAB_DIR": str(lab_state.dir)}
    vm = lab_state.vms[0].name
    silent = silent_vm(lab_state)
    before = time.time()

    def kvmkit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    assert kvmkit("snapshot", "create", vm, "--name", "health1").returncode == 0
    failed = kvmkit("snapshot", "create", silent, "--name", "health1")
    assert failed.returncode == 5, failed.stderr  # EnvironmentProblem: the agent is not answering
    try:
        monkeypatch.setenv("KVMKIT_STATE_DIR", str(state_dir))
        from kvmkit.congestion.procfs import ProcReader
        from kvmkit.health.metrics import collector as health_collector

        collectors = [exporter.CongestionCollector(ProcReader()), health_collector()]  # as `kvmkit serve` has them
        server, _ = exporter.start("127.0.0.1", 0, collectors=collectors)
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read()
        finally:
            server.shutdown()
            server.server_close()
        samples = {}
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        last = samples[("kvmkit_snapshot_last_success_timestamp_seconds", (("vm", vm),))]
        assert before < last < time.time()
        assert 0 < samples[("kvmkit_snapshot_last_freeze_seconds", (("vm", vm),))] < 10
        assert samples[("kvmkit_snapshot_freeze_seconds_count", (("vm", vm),))] == 1
        assert samples[("kvmkit_snapshot_failures_total", (("reason", "environment_problem"), ("vm", silent)))] == 1
        assert samples[("kvmkit_recover_orphans", (("vm", vm),))] == 0
        assert any(name.startswith("kvmkit_vcpu") or name.startswith("kvmkit_host") for name, _ in samples)
    finally:
        kvmkit("snapshot", "delete", vm, "health1", "--yes")
