"""The collector against real processes and threads (loadgen: looks like QEMU, spins for real)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from kvmkit.congestion.bench import accuracy_case, loadgen, sampling_cost, spinners
from kvmkit.congestion.collector import Collector
from kvmkit.congestion.model import ThreadKind
from kvmkit.congestion.procfs import ProcReader

FAIR_SHARE_NEEDS_QUIET_CORE_PCT = 2.0


@pytest.mark.parametrize("busy", [1, 2, 3])
def test_each_threads_congestion_matches_its_clock_gap_truth_within_2pp(busy: int, quiet_core: int):
    case = accuracy_case(busy, [quiet_core], seconds=1.5)
    assert len(case.threads) == busy
    for thread in case.threads:
        assert thread.error_pp <= 2.0, case
    assert case.runnable_pct == pytest.approx(100, abs=2)  # spinning threads are always runnable


@pytest.mark.parametrize("busy", [2, 4])
def test_k_threads_on_one_core_each_wait_k_minus_1_over_k(busy: int, quiet_core: int):
    case = accuracy_case(busy, [quiet_core], seconds=1.5)
    if case.other_load_pct > FAIR_SHARE_NEEDS_QUIET_CORE_PCT:
        pytest.skip(f"core {quiet_core} carried {case.other_load_pct} % of other load: fair share undefined")
    assert case.fair_share_pct == pytest.approx(100 * (busy - 1) / busy, abs=1e-3)
    for thread in case.threads:
        assert thread.measured_pct == pytest.approx(case.fair_share_pct, abs=2.0), case


def test_a_vm_that_stops_between_readings_is_skipped_with_a_reason():
    with spinners(1, [0], 30) as counters:
        (pid,) = counters
        collector = Collector(ProcReader(pids=[pid]))
        collector.sample()
        proc_gone = subprocess.run(["kill", "-9", str(pid)], check=True)
        assert proc_gone.returncode == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the parent reaps it when the context exits; wait for zombie
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        report = collector.sample()
    assert report is not None
    assert report.vms == [] or report.vms[0].vcpus == []
    reasons = [s.reason for s in report.skipped]
    assert any("exited" in r or "no baseline" in r for r in reasons) or report.vms[0].vcpus == []


def test_threads_that_end_leave_no_trace_in_the_collector():
    reader = ProcReader()
    collector = Collector(reader)
    collector.sample()
    with loadgen("short-lived", 8, 0, None, seconds=30) as proc:
        collector.sample()
        during = collector.sample()
        assert during is not None
        mine = [vm for vm in during.vms if vm.pid == proc.pid]
        assert len(mine) == 1 and mine[0].domain == "short-lived" and mine[0].vcpus_allocated == 8
    after = collector.sample()
    assert after is not None and all(vm.pid != proc.pid for vm in after.vms)
    others = sum(len(vm.vcpus) + vm.emulator.threads + vm.iothreads.threads + vm.vhost.threads for vm in after.vms)
    assert reader.cached_threads <= others + 1  # only live QEMU threads stay cached


def test_sampling_500_threads_at_1hz_costs_at_most_1_percent_of_a_core():
    cost = sampling_cost(threads=500, samples=2, interval_s=1.0)
    assert cost.threads >= 500
    assert cost.core_pct <= 1.0, cost


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_a_real_qemu_is_found_and_its_threads_classified(tmp_path):
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "32", "-smp", "2",
            "-name", "guest=kvmkit-congestion-test,debug-threads=on", "-object", "iothread,id=io7"]  # fmt: skip
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        reader = ProcReader()
        deadline = time.monotonic() + 10
        vm = None
        while time.monotonic() < deadline:  # QEMU names its vCPU threads as it creates them: no event to wait on
            found = [v for v in reader.read().vms if v.pid == qemu.pid]
            kinds = [t.cls.kind for t in found[0].threads] if found else []
            if kinds.count(ThreadKind.VCPU) == 2 and ThreadKind.IOTHREAD in kinds:
                vm = found[0]
                break
            time.sleep(0.05)
        assert vm is not None, "QEMU's vCPU threads never appeared"
        assert vm.domain == "kvmkit-congestion-test"
        assert sorted(t.cls.vcpu for t in vm.threads if t.cls.kind is ThreadKind.VCPU) == [0, 1]
        assert [t.cls.label for t in vm.threads if t.cls.kind is ThreadKind.IOTHREAD] == ["io7"]
        assert any(t.cls.kind is ThreadKind.EMULATOR for t in vm.threads)
    finally:
        qemu.kill()
        qemu.wait()


@pytest.mark.lab
def test_lab_vms_are_mapped_to_domains_and_measured():
    pgrep = subprocess.run(["pgrep", "qemu-system"], capture_output=True, text=True)
    pids = [int(p) for p in pgrep.stdout.split()]
    if not pids:
        pytest.skip("no running QEMU (the lab fixture brings VMs up)")
    collector = Collector(ProcReader(pids=pids))
    collector.sample()
    time.sleep(1)
    report = collector.sample()
    assert report is not None
    assert {vm.pid for vm in report.vms} == set(pids)
    for vm in report.vms:
        assert not vm.domain.startswith("pid-") and vm.vcpus, vm
    try:
        import libvirt
        from kvmkit import config

        conn = libvirt.openReadOnly(config.load().libvirt_uri)
    except Exception as exc:  # libvirt is optional: the mapping above needs none
        pytest.skip(f"libvirt mapping not checked: {exc}")
    try:
        running = {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    finally:
        conn.close()
    assert running <= {vm.domain for vm in report.vms}
