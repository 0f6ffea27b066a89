"""Lab ground truth for kvmkit memory: each test causes what it measures on real TCG guests of the test lab.

One transient balloon guest (384 MiB, virtio balloon with 1 s stats, `balloon` initrd flavour) is shared by the
module; the session lab VM is the neighbour that must stay flat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmkit.memory.balloon import LibvirtBalloons
from kvmkit.memory.collector import MemCollector
from kvmkit.memory.model import MemoryReport, VmMemory
from kvmkit.memory.procfs import MemReader
from kvmkit.virt import agent
from tests.conftest import TEST_LAB_DIR
from tests.memory.labvm import KSM, balloon_guest, guest_meminfo, ksm_running, zram_swap

pytestmark = pytest.mark.lab
MIB = 1 << 20
NAME = f"{TEST_LAB_DIR.name}-mem"
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def mem_guest(lab_state) -> Iterator[tuple[libvirt.virDomain, str]]:
    """(the balloon guest, the session lab VM's name)."""
    from kvmkit.virt import connection  # noqa: F401  (keeps libvirt from printing agent pings to stderr)

    with balloon_guest(lab_state.uri, TEST_LAB_DIR, NAME) as dom:
        yield dom, lab_state.vms[0].name


@pytest.fixture
def collector(lab_state) -> Iterator[MemCollector]:
    balloons = LibvirtBalloons(lab_state.uri)
    with MemCollector(MemReader(balloons=balloons.read, split_max_age_s=0.0)) as collected:
        yield collected
    balloons.close()


def _vm(report: MemoryReport | None, domain: str) -> VmMemory:
    assert report is not None
    return next(vm for vm in report.vms if vm.domain == domain)


def _window(collector: MemCollector, seconds: float) -> MemoryReport:
    collector.sample()
    time.sleep(seconds)
    report = collector.sample()
    assert report is not None
    return report


def _vm_rss_from_status(pid: int) -> int:
    with Path(f"/proc/{pid}/status").open() as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_qemu_rss_is_within_2_percent_of_proc_status_at_the_same_instant(mem_guest, collector):
    _, neighbour = mem_guest
    for _ in range(3):
        reading = collector.reader.read()
        for vm in reading.vms:
            if vm.domain in (NAME, neighbour):
                truth = _vm_rss_from_status(vm.pid)
                assert vm.rss_bytes == pytest.approx(truth, rel=0.02), vm.domain
                assert vm.split is not None and 0 < vm.split.guest_ram_rss <= vm.configured_bytes


def test_balloon_inflate_via_libvirt_is_followed_and_the_guests_available_memory_drops(mem_guest, collector):
    dom, _ = mem_guest
    before = _vm(_window(collector, 1.2), NAME)
    assert before.balloon_bytes == 384 * MIB and before.guest_available_bytes is not None
    target = 256 * MIB
    dom.setMemoryFlags(target // 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    try:
        deadline = time.monotonic() + 20
        while True:  # the guest gives pages back at its own pace and reports every second
            after = _vm(_window(collector, 1.0), NAME)
            total = after.detail.guest_total_bytes
            shrunk = total is not None and total < before.detail.guest_total_bytes - 100 * MIB
            if after.balloon_bytes == target and shrunk:
                break
            assert time.monotonic() < deadline, f"balloon not followed: {after}"
        assert after.balloon_bytes == dom.info()[2] * 1024  # libvirt's own current memory
        truth = guest_meminfo(dom)["MemAvailable"]  # the guest's own /proc/meminfo, through the agent
        assert after.guest_available_bytes == pytest.approx(truth, rel=0.05)
        assert after.guest_available_bytes < before.guest_available_bytes - 90 * MIB
    finally:
        dom.setMemoryFlags(384 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def _ksmd_ticks() -> int:
    pid = next(p for p in os.listdir("/proc") if p.isdigit() and _comm(p) == "ksmd")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, USER_HZ ticks


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _merging_pages() -> dict[int, int]:
    out = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            pages = int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())
        except (OSError, ValueError):
            continue
        if pages:
            out[int(pid)] = pages
    return out


def test_ksm_saving_of_two_vms_with_identical_pages_matches_the_kernels_counts(mem_guest, collector):
    if not KSM.exists():
        report = _window(collector, 0.2)
        assert report.host.ksm_saved_bytes is None and "KSM" in report.host.null_reasons["ksm_saved_bytes"]
        pytest.skip("kernel without KSM: the null-with-reason path was checked instead")
    dom, neighbour = mem_guest
    conn = dom.connect()
    # 16 MiB of one 16-byte pattern in each guest's tmpfs: every page identical, within and across the VMs
    pattern = "yes kvmkit-pattern! | head -c 16777216 > /run/ksm-pattern"
    doms = (dom, conn.lookupByName(neighbour))
    for d in doms:
        agent.guest_shell(d, pattern, 60.0)
    try:
        with ksm_running():
            pids = {vm.domain: vm.pid for vm in collector.reader.read().vms}
            deadline = time.monotonic() + 60
            ticks0, hz = _ksmd_ticks(), os.sysconf("SC_CLK_TCK")
            collector.sample()
            started = time.monotonic()
            while min(_merging_pages().get(pids[d.name()], 0) for d in doms) < 4096:
                assert time.monotonic() < deadline, "KSM did not merge the pattern pages within 60 s"
                time.sleep(0.5)
            busy = collector.sample()
            truth_cpu = 100 * (_ksmd_ticks() - ticks0) / hz / (time.monotonic() - started)
            assert busy is not None and busy.host.ksm_cpu_pct == pytest.approx(truth_cpu, abs=2.0)
            assert busy.host.ksm_cpu_pct > 1.0  # ksmd scanned at full speed
            (KSM / "run").write_text("0")  # stop scanning: the counters hold still while they are compared
            time.sleep(0.2)
            report = _window(collector, 0.3)
            sharing = int((KSM / "pages_sharing").read_text())
            shared = int((KSM / "pages_shared").read_text())
            merging = _merging_pages()
    finally:
        for d in doms:
            agent.guest_shell(d, "rm -f /run/ksm-pattern", 60.0)
    assert report.host.ksm_saved_bytes == sharing * PAGE
    # independent count: every merged page of every process, minus the KSM pages they share
    assert report.host.ksm_saved_bytes == pytest.approx((sum(merging.values()) - shared) * PAGE, rel=0.01)
    for d in doms:
        assert _vm(report, d.name()).detail.ksm_merged_bytes >= 16 * MIB


def test_a_guest_filling_memory_under_a_cgroup_limit_feels_pressure_and_its_neighbour_stays_flat(
    mem_guest, collector
):
    dom, neighbour = mem_guest
    with zram_swap():
        quiet = _window(collector, 2.0)
        vm = _vm(quiet, NAME)
        assert vm.psi_some_pct is not None and vm.psi_some_pct < 1.0
        pid = vm.pid
        cgroup = Path(f"/proc/{pid}/cgroup").read_text().split(":memory:", 1)[1].split()[0]
        usage = int(Path(f"/sys/fs/cgroup/memory{cgroup}/memory.usage_in_bytes").read_text())
        # cgroup v1 here (no memory.high): libvirt's hard_limit is memory.limit_in_bytes, 32 MiB above usage
        dom.setMemoryParameters({"hard_limit": usage // 1024 + 32 * 1024}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        try:
            collector.sample()
            agent.guest_shell(dom, "dd if=/dev/zero of=/run/fill bs=1M count=128 2>/dev/null", 120.0)
            loaded = collector.sample()
        finally:
            unlimited = 9007199254740991  # VIR_DOMAIN_MEMORY_PARAM_UNLIMITED (a C #define the binding lacks)
            dom.setMemoryParameters({"hard_limit": unlimited}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            agent.guest_shell(dom, "rm -f /run/fill", 60.0)
    hot, calm = _vm(loaded, NAME), _vm(loaded, neighbour)
    assert hot.psi_some_pct is not None and hot.psi_some_pct >= 1.0, hot
    assert hot.major_faults_per_s is not None and hot.major_faults_per_s > 20, hot
    assert hot.swap_in_bytes_per_s is not None and hot.swap_in_bytes_per_s > 0, hot
    assert loaded.host.swap_in_bytes_per_s is not None and loaded.host.swap_in_bytes_per_s > 0
    assert hot.detail.memory_max_events > (vm.detail.memory_max_events or 0)  # the limit was hit
    assert calm.psi_some_pct is not None and calm.psi_some_pct < 0.5, calm
    assert calm.major_faults_per_s is not None and calm.major_faults_per_s < 5, calm


def test_enforce_dry_run_changes_nothing_and_apply_revert_move_real_balloon_and_soft_limit(mem_guest, tmp_path):
    """A recording of the lab, judged by a policy the balloon guest breaks (SLO 0.001 % is broken by any stall,
    so the guest is ballooned down first and made to stall): dry run first, then the journaled change, then revert."""
    from typer.testing import CliRunner

    from kvmkit.memory import control
    from kvmkit.memory.cli import app

    dom, _ = mem_guest
    uri = dom.connect().getURI()
    backend = control.LibvirtMemory(uri)
    try:
        before = backend.parameters(NAME)
        assert before["balloon_kib"] == before["max_kib"] == 384 * 1024
        journal = control.Journal(tmp_path / "journal.jsonl")
        actions = [control.Action(NAME, "balloon_kib", before["balloon_kib"], 320 * 1024, "lab"),
                   control.Action(NAME, "soft_limit_kib", before["soft_limit_kib"], 300 * 1024, "lab")]  # fmt: skip
        planned = control.apply(actions, backend, None)
        assert [o.state for o in planned] == ["planned", "planned"] and backend.parameters(NAME) == before
        assert [o.state for o in control.apply(actions, backend, journal)] == ["done", "done"]
        changed = backend.parameters(NAME)
        assert abs(changed["balloon_kib"] - 320 * 1024) <= control.BALLOON_SLACK_KIB  # the guest got there
        assert changed["soft_limit_kib"] == 300 * 1024
        assert (tmp_path / "journal.jsonl").stat().st_mode & 0o777 == 0o600
        assert [o.state for o in control.revert(backend, journal, holds=control.holds)] == ["reverted", "reverted"]
        after = backend.parameters(NAME)
        assert abs(after["balloon_kib"] - before["balloon_kib"]) <= control.BALLOON_SLACK_KIB
        assert after["soft_limit_kib"] == before["soft_limit_kib"]
    finally:
        backend.close()
    # the CLI end to end on a real recording: sample → policy → enforce --dry-run → advise
    record = tmp_path / "memory.jsonl"
    runner = CliRunner()
    sampled = runner.invoke(app, ["sample", "--interval", "0.5", "--count", "3", "--json", "--uri", uri,
                                  "--history", str(record)])  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[classes.all]\npriority = 1\nslo_pressure_pct = 50\ndomains = ["*"]\n')
    dry = runner.invoke(app, ["enforce", "--policy", str(policy_file), "--history", str(record), "--dry-run",
                              "--uri", uri, "--json", "--journal", str(tmp_path / "j2.jsonl")])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert '"dry_run": true' in dry.output and not (tmp_path / "j2.jsonl").exists()
    advised = runner.invoke(app, ["advise", "--history", str(record), "--slo-pct", "5"])
    assert advised.exit_code == 0, advised.output
    assert "ram_ratio = " in advised.output
