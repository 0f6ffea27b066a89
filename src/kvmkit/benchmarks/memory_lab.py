"""Lab ground truth for `kvmkit memory`: each check CAUSES what it measures on real TCG guests and compares the
collector's figure with a truth that does not come from the collector. Used by `kvmkit memory bench` and by the
lab tests (which assert on the same rows).

The lab's own VMs have no balloon (memballoon model='none'); `balloon_guest` boots the lab's guest kernel with the
`balloon` initrd flavour (virtio_balloon loaded) and a virtio balloon whose stats period is 1 s, so libvirt gets
the guest's own memory figures. Transient: destroying the domain removes it. The guest's tmpfs (/run) is the
allocator: `dd` into it touches guest RAM, `yes | head` into it writes identical pages.

Two checks change host settings for their duration and put them back: `pressure` adds a zram swap device (a
cgroup v1 memory limit without swap can only OOM-kill QEMU), `ksm` turns KSM on at full speed (and, if nothing
was merged before, unmerges afterwards).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
from pydantic import BaseModel

from kvmkit.lab import domain, guest
from kvmkit.memory.collector import MemCollector
from kvmkit.memory.model import MemoryReport, VmMemory
from kvmkit.virt import agent

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
UNLIMITED_KIB = 9007199254740991  # VIR_DOMAIN_MEMORY_PARAM_UNLIMITED


class Check(BaseModel):
    """One figure of the collector against its truth, measured in the same run."""

    check: str
    figure: str
    measured: float | None
    truth: float | None
    unit: str
    error: float | None  # |measured − truth| in `unit` (pp for percentages) or relative (%) where `relative`
    relative: bool
    tolerance: float
    ok: bool
    note: str = ""


def _check(check: str, figure: str, measured: float | None, truth: float | None, unit: str, tolerance: float,
           relative: bool = False, note: str = "") -> Check:  # fmt: skip
    error = None
    if measured is not None and truth is not None:
        error = abs(measured - truth) / abs(truth) * 100 if relative and truth else abs(measured - truth)
    ok = error is not None and error <= tolerance
    return Check(check=check, figure=figure, measured=measured, truth=truth, unit=unit,
                 error=None if error is None else round(error, 3), relative=relative, tolerance=tolerance, ok=ok,
                 note=note)  # fmt: skip


def _vm(report: MemoryReport | None, domain_name: str) -> VmMemory:
    assert report is not None
    return next(vm for vm in report.vms if vm.domain == domain_name)


def _window(collector: MemCollector, seconds: float) -> MemoryReport:
    collector.sample()
    time.sleep(seconds)
    report = collector.sample()
    assert report is not None
    return report


def balloon_xml(spec: domain.VmSpec, stats_period_s: int = 1) -> str:
    xml = domain.domain_xml(spec)
    balloon = f"<memballoon model='virtio'><stats period='{stats_period_s}'/></memballoon>"
    return xml.replace('<memballoon model="none" />', balloon)


@contextmanager
def balloon_guest(uri: str, lab_dir: Path, name: str, memory_mib: int = 384) -> Iterator[libvirt.virDomain]:
    """A running transient guest with a balloon, agent ready; destroyed afterwards."""
    image = guest.build(lab_dir.parent / "guest-cache", balloon=True)
    console = lab_dir / "log" / f"{name}.console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    spec = domain.VmSpec(name=name, image=image, console_log=console, memory_mib=memory_mib)
    xml = balloon_xml(spec)
    if "virtio" not in xml:
        raise RuntimeError("the lab's domain XML changed: no memballoon element to replace")
    conn = libvirt.open(uri)
    dom = conn.createXML(xml, 0)
    try:
        deadline = time.monotonic() + 90
        while not agent.ping(dom, timeout_s=1):  # no event tells when qemu-ga starts in the guest
            if time.monotonic() > deadline or not dom.isActive():
                raise RuntimeError(f"{name}: the guest agent never answered; console in {console}")
            time.sleep(0.25)
        yield dom
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass  # already gone (killed by a test)
        conn.close()


def guest_meminfo(dom: libvirt.virDomain) -> dict[str, int]:
    """/proc/meminfo inside the guest, through the agent, in bytes."""
    from kvmkit.memory.parse import meminfo

    return meminfo(agent.guest_shell(dom, "cat /proc/meminfo", 30.0))


@contextmanager
def zram_swap(size: str = "512M") -> Iterator[str]:
    """A zram swap device for the duration of a test (memory-backed: nothing is written to disk), then removed.

    This hybrid host's memory controller is cgroup v1: a VM over its limit and without swap can only have its
    QEMU OOM-killed. With swap, the limit makes the kernel reclaim the VM's anonymous memory instead — the
    swap-storm case operators meet. Global reclaim does not touch it while the host has free RAM, so other
    processes are not swapped.
    """
    import subprocess

    control = Path("/sys/class/zram-control")
    if not control.exists():
        raise RuntimeError("this kernel has no zram (CONFIG_ZRAM): the pressure check needs a swap device")
    number = (control / "hot_add").read_text().strip()
    device = f"/dev/zram{number}"
    try:
        Path(f"/sys/block/zram{number}/disksize").write_text(size)
        subprocess.run(["mkswap", device], check=True, capture_output=True)
        subprocess.run(["swapon", "-p", "-5", device], check=True, capture_output=True)
        yield device
    finally:
        subprocess.run(["swapoff", device], capture_output=True)
        (control / "hot_remove").write_text(number)


KSM = Path("/sys/kernel/mm/ksm")


@contextmanager
def ksm_running(pages_to_scan: int = 5000, sleep_ms: int = 20) -> Iterator[None]:
    """KSM on and fast for the test; afterwards its settings back, and if nothing was merged before, unmerged."""
    names = ("run", "pages_to_scan", "sleep_millisecs")
    before = {name: (KSM / name).read_text().strip() for name in names}
    merged_before = int((KSM / "pages_sharing").read_text())
    try:
        (KSM / "pages_to_scan").write_text(str(pages_to_scan))
        (KSM / "sleep_millisecs").write_text(str(sleep_ms))
        (KSM / "run").write_text("1")
        yield
    finally:
        if before["run"] == "0" and merged_before == 0:
            (KSM / "run").write_text("2")  # unmerge what the test merged (other VMs' pages included)
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            (KSM / name).write_text(before[name])


def vm_rss_from_status(pid: int) -> int:
    with Path(f"/proc/{pid}/status").open() as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def rss_check(collector: MemCollector, domains: list[str], rounds: int = 3) -> list[Check]:
    """QEMU RSS against /proc/PID/status VmRSS read right after the reading (2 %)."""
    out = []
    for _ in range(rounds):
        reading = collector.reader.read()
        for vm in reading.vms:
            if vm.domain in domains:
                truth = vm_rss_from_status(vm.pid)
                out.append(_check("rss", f"{vm.domain} rss_bytes", vm.rss_bytes, truth, "B", 2.0, relative=True,
                                  note="truth: /proc/PID/status VmRSS at the same instant"))  # fmt: skip
    return out


def balloon_check(dom: libvirt.virDomain, collector: MemCollector, target_mib: int = 256) -> list[Check]:
    """Inflate the balloon through libvirt; balloon_bytes must follow, the guest's MemAvailable drop (and match
    its own /proc/meminfo read through the agent). The balloon goes back to its maximum afterwards."""
    name = dom.name()
    before = _vm(_window(collector, 1.2), name)
    dom.setMemoryFlags(target_mib * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    try:
        deadline = time.monotonic() + 20
        while True:  # the guest gives pages back at its own pace and reports every second
            after = _vm(_window(collector, 1.0), name)
            total, was = after.detail.guest_total_bytes, before.detail.guest_total_bytes
            if after.balloon_bytes == target_mib * MIB and total is not None and was and total < was - 100 * MIB:
                break
            if time.monotonic() > deadline:
                break
        settled = time.monotonic() + 10
        while time.monotonic() < settled:  # the guest reports once a second: wait until its figure stands still
            again = _vm(_window(collector, 1.1), name)
            if again.guest_available_bytes == after.guest_available_bytes:
                break
            after = again
        truth = guest_meminfo(dom)["MemAvailable"]
        libvirt_kib = dom.info()[2]
    finally:
        dom.setMemoryFlags(dom.maxMemory(), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    drop = None
    if before.guest_available_bytes is not None and after.guest_available_bytes is not None:
        drop = (before.guest_available_bytes - after.guest_available_bytes) / MIB
    return [
        _check("balloon", "balloon_bytes after inflate (MiB)", (after.balloon_bytes or 0) / MIB, libvirt_kib / 1024,
               "MiB", 1.0, note=f"target {target_mib} MiB; truth: libvirt virDomainGetInfo"),
        _check("balloon", "guest_available_bytes (MiB)", (after.guest_available_bytes or 0) / MIB, truth / MIB,
               "MiB", 5.0, relative=True, note="truth: the guest's /proc/meminfo via qemu-ga"),
        _check("balloon", "guest available drop (MiB)", drop, float((before.balloon_bytes or 0) / MIB - target_mib),
               "MiB", 15.0, relative=True, note="truth: the balloon's own change; the guest keeps some caches"),
    ]  # fmt: skip


def _ksmd_ticks() -> int:
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ksmd":
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])  # utime + stime, USER_HZ ticks
        except OSError:
            continue
    raise RuntimeError("no ksmd thread")


def merging_pages() -> dict[int, int]:
    """/proc/PID/ksm_merging_pages of every process that has merged pages."""
    out = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            pages = int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())
        except (OSError, ValueError):
            continue
        if pages:
            out[int(pid)] = pages
    return out


def ksm_check(doms: list[libvirt.virDomain], collector: MemCollector, pattern_mib: int = 16) -> list[Check]:
    """Identical pages in two guests, KSM on: the saving against the kernel's per-process merge counts (with KSM
    stopped, so the counters hold still), ksmd's CPU against its own utime+stime ticks."""
    pattern = f"yes kvmkit-pattern! | head -c {pattern_mib * MIB} > /run/ksm-pattern"  # 16-byte lines: same pages
    for d in doms:
        agent.guest_shell(d, pattern, 60.0)
    try:
        with ksm_running():
            pids = {vm.domain: vm.pid for vm in collector.reader.read().vms}
            deadline = time.monotonic() + 60
            ticks0, hz = _ksmd_ticks(), os.sysconf("SC_CLK_TCK")
            collector.sample()
            started = time.monotonic()
            while min(merging_pages().get(pids[d.name()], 0) for d in doms) < pattern_mib * MIB // PAGE:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            busy = collector.sample()
            truth_cpu = 100 * (_ksmd_ticks() - ticks0) / hz / (time.monotonic() - started)
            (KSM / "run").write_text("0")  # stop scanning: the counters hold still while they are compared
            time.sleep(0.2)
            report = _window(collector, 0.3)
            sharing = int((KSM / "pages_sharing").read_text())
            shared = int((KSM / "pages_shared").read_text())
            merging = merging_pages()
    finally:
        for d in doms:
            agent.guest_shell(d, "rm -f /run/ksm-pattern", 60.0)
    assert busy is not None
    rows = [
        _check("ksm", "ksm_saved_bytes vs pages_sharing × page (MiB)", (report.host.ksm_saved_bytes or 0) / MIB,
               sharing * PAGE / MIB, "MiB", 0.0, note="sysfs read right after, KSM stopped"),
        _check("ksm", "ksm_saved_bytes vs Σ ksm_merging_pages − pages_shared (MiB)",
               (report.host.ksm_saved_bytes or 0) / MIB, (sum(merging.values()) - shared) * PAGE / MIB, "MiB", 1.0,
               relative=True, note="truth: every process's /proc/PID/ksm_merging_pages"),
        _check("ksm", "ksm_cpu_pct while scanning", busy.host.ksm_cpu_pct, round(truth_cpu, 3), "%", 2.0,
               note=f"truth: ksmd utime+stime ({hz} Hz ticks)"),
    ]  # fmt: skip
    for d in doms:
        merged = _vm(report, d.name()).detail.ksm_merged_bytes
        rows.append(_check("ksm", f"{d.name()} ksm_merged_bytes ≥ its pattern (MiB)", (merged or 0) / MIB,
                           float(pattern_mib), "MiB", 0, note="caused: the pattern the check wrote"))  # fmt: skip
        rows[-1].ok = (merged or 0) >= pattern_mib * MIB
    return rows


def pressure_check(dom: libvirt.virDomain, neighbour: str, collector: MemCollector, fill_mib: int = 128) -> list[Check]:
    """A cgroup memory limit 32 MiB above the guest's usage (libvirt hard_limit: cgroup v1 here, which has no
    memory.high) and zram swap, then the guest fills `fill_mib` of tmpfs: its PSI, major faults and swap-in
    rise, its neighbour's stay flat. Truths: the quiet window before (anchor) and the neighbour."""
    name = dom.name()
    with zram_swap():
        quiet = _vm(_window(collector, 2.0), name)
        cgroup = Path(f"/proc/{quiet.pid}/cgroup").read_text().split(":memory:", 1)[1].split()[0]
        usage = int(Path(f"/sys/fs/cgroup/memory{cgroup}/memory.usage_in_bytes").read_text())
        dom.setMemoryParameters({"hard_limit": usage // 1024 + 32 * 1024}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        try:
            collector.sample()
            agent.guest_shell(dom, f"dd if=/dev/zero of=/run/fill bs=1M count={fill_mib} 2>/dev/null", 120.0)
            loaded = collector.sample()
        finally:
            dom.setMemoryParameters({"hard_limit": UNLIMITED_KIB}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            agent.guest_shell(dom, "rm -f /run/fill", 60.0)
    assert loaded is not None
    hot, calm = _vm(loaded, name), _vm(loaded, neighbour)
    rows = [
        _check("pressure", f"{name} psi_some_pct before (quiet anchor)", quiet.psi_some_pct, 0.0, "%", 1.0),
        _check("pressure", f"{name} psi_some_pct while filling under the limit", hot.psi_some_pct, None, "%", 0,
               note="caused: must rise ≥ 1 pp above the anchor"),
        _check("pressure", f"{neighbour} psi_some_pct meanwhile", calm.psi_some_pct, 0.0, "%", 0.5,
               note="the neighbour stays flat"),
        _check("pressure", f"{name} major_faults_per_s", hot.major_faults_per_s, None, "/s", 0,
               note="caused: swap-ins are major faults (> 20/s)"),
        _check("pressure", f"{name} swap_in_bytes_per_s (and the host's pswpin)", hot.swap_in_bytes_per_s,
               loaded.host.swap_in_bytes_per_s, "B/s", 0,
               note="caused: both > 0; on cgroup v1 the VM's figure is workingset_refault_anon, an estimate"),
        _check("pressure", f"{name} memory_max_events (limit hits)", hot.detail.memory_max_events,
               quiet.detail.memory_max_events, "", 0, note="caused: must grow"),
    ]  # fmt: skip
    rows[1].ok = (hot.psi_some_pct or 0) >= (quiet.psi_some_pct or 0) + 1.0
    rows[3].ok = (hot.major_faults_per_s or 0) > 20
    rows[4].ok = bool(hot.swap_in_bytes_per_s) and bool(loaded.host.swap_in_bytes_per_s)
    rows[5].ok = (hot.detail.memory_max_events or 0) > (quiet.detail.memory_max_events or 0)
    return rows
