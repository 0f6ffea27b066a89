"""Pure arithmetic from two memory readings to a report. No I/O, no clocks: everything comes in the readings.

Rates (swap-in, major faults, ksmd CPU, PSI over the interval) are deltas of cumulative counters over the
interval; levels (RSS, balloon, available) are the later reading's. A field that cannot be given is None and
its key in `null_reasons` says why — the reading's own reason, or one of the few decided here (no swap, KSM off,
no baseline yet for a VM seen for the first time).
"""

from __future__ import annotations

from kvmkit.memory.balloon import no_guest_stats_reason
from kvmkit.memory.model import (
    HostDetail,
    HostMemory,
    HostReading,
    MemoryReport,
    Reading,
    VmDetail,
    VmMemory,
    VmReading,
)
from kvmkit.sampling.procfiles import PsiReading

NO_BASELINE = "first reading of this VM: no baseline for rates yet"
_VM_HEADLINE = tuple(k for k in VmMemory.model_fields if k not in ("null_reasons", "detail"))


def _rate(prev: int | None, cur: int | None, dt_s: float, scale: float = 1.0) -> float | None:
    if prev is None or cur is None or cur < prev:
        return None
    return round((cur - prev) * scale / dt_s, 3)


def _psi_pct(prev: PsiReading | None, cur: PsiReading | None, dt_s: float, full: bool) -> float | None:
    if prev is None or cur is None:
        return None
    a, b = (prev.full_total_us, cur.full_total_us) if full else (prev.some_total_us, cur.some_total_us)
    if a is None or b is None or b < a:
        return None
    return round(100.0 * (b - a) / (dt_s * 1e6), 3)


def _null(values: dict[str, object], reasons: dict[str, str], fallback: dict[str, str]) -> dict[str, str]:
    """The reason of every None among `values`: the reading's, else the fallback, else a generic one."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            out[name] = reasons.get(name) or fallback.get(name) or "not measured"
    return out


def host_memory(prev: HostReading, cur: HostReading, vms: list[VmMemory], dt_s: float) -> HostMemory:
    info = cur.meminfo
    page = cur.page_size
    ram = info.get("MemTotal")
    configured = sum(vm.configured_bytes or 0 for vm in vms)
    swap_total = info.get("SwapTotal")
    has_swap = bool(swap_total)
    reasons = dict(cur.reasons)
    if swap_total == 0:
        reasons.setdefault("swap_in_bytes_per_s", "no swap configured (SwapTotal 0)")
    ksm = cur.ksm
    ksm_cpu = None
    if ksm is not None and prev.ksmd_run_ns is not None and cur.ksmd_run_ns is not None:
        ksm_cpu = round(100.0 * (cur.ksmd_run_ns - prev.ksmd_run_ns) / (dt_s * 1e9), 3)
    ballooned = [vm.balloon_bytes if vm.balloon_bytes is not None else vm.configured_bytes or 0 for vm in vms]
    host = HostMemory(
        ram_bytes=ram,
        vm_configured_bytes=configured,
        oversubscription=round(configured / ram, 4) if ram else None,
        available_bytes=info.get("MemAvailable"),
        swap_in_bytes_per_s=_rate(prev.pswpin, cur.pswpin, dt_s, page) if has_swap else None,
        psi_some_avg10=cur.psi.some_avg10 if cur.psi else None,
        psi_full_avg10=cur.psi.full_avg10 if cur.psi else None,
        ksm_saved_bytes=ksm.pages_sharing * page if ksm else None,
        ksm_cpu_pct=ksm_cpu,
        detail=HostDetail(
            swap_total_bytes=swap_total,
            swap_used_bytes=swap_total - info.get("SwapFree", 0) if swap_total is not None else None,
            swap_out_bytes_per_s=_rate(prev.pswpout, cur.pswpout, dt_s, page) if has_swap else None,
            psi_some_pct=_psi_pct(prev.psi, cur.psi, dt_s, full=False),
            psi_full_pct=_psi_pct(prev.psi, cur.psi, dt_s, full=True),
            vm_balloon_bytes=sum(ballooned),
            balloon_oversubscription=round(sum(ballooned) / ram, 4) if ram else None,
            ksm_pages_sharing=ksm.pages_sharing if ksm else None,
            ksm_pages_shared=ksm.pages_shared if ksm else None,
            ksm_zero_pages_bytes=ksm.zero_pages * page if ksm and ksm.zero_pages is not None else None,
            ksm_running=ksm.run == 1 if ksm else None,
            thp_anon_bytes=info.get("AnonHugePages"),
            hugepages_total_bytes=_hugepages(info, "HugePages_Total"),
            hugepages_free_bytes=_hugepages(info, "HugePages_Free"),
            zswap_pool_bytes=info.get("Zswap") if cur.zswap_enabled else None,
            zswapped_bytes=info.get("Zswapped") if cur.zswap_enabled else None,
        ),
    )
    fallback = {"ksm_cpu_pct": reasons.get("ksm_saved_bytes", "ksmd not found")}
    fallback["psi_full_avg10"] = reasons.get("psi_some_avg10", "no full line in /proc/pressure/memory")
    for name in ("available_bytes", "oversubscription"):
        fallback[name] = reasons.get("ram_bytes", "/proc/meminfo lacks the field")
    headline = {k: getattr(host, k) for k in HostMemory.model_fields if k not in ("null_reasons", "detail")}
    host.null_reasons = _null(headline, reasons, fallback)
    if cur.zswap_enabled is not True:
        host.null_reasons["zswap_pool_bytes"] = "zswap disabled" if cur.zswap_enabled is False else "no zswap"
    return host


def _hugepages(info: dict[str, int], key: str) -> int | None:
    count, size = info.get(key), info.get("Hugepagesize")
    return count * size if count is not None and size is not None else None


def vm_memory(prev: VmReading | None, cur: VmReading, dt_s: float, page: int) -> VmMemory:
    reasons = dict(cur.reasons)
    cg, balloon, split = cur.cgroup, cur.balloon, cur.split
    pcg = prev.cgroup if prev else None
    pballoon = prev.balloon if prev else None
    if cg is not None and cg.swap_in_source is None and "swap_in_bytes_per_s" not in reasons:
        reasons["swap_in_bytes_per_s"] = "no swap configured on the host"
    if prev is None:
        for name in ("major_faults_per_s", "swap_in_bytes_per_s", "psi_some_pct", "psi_full_pct"):
            reasons.setdefault(name, NO_BASELINE)
    overhead = None
    if split is not None:
        # both from the same smaps read (detail.split_age_s old): QEMU's overhead moves slowly, guest RAM does not
        overhead = max(0, split.rss - (split.guest_ram_rss - split.hugetlb_bytes))  # hugetlb is not in RSS
        if cur.rss_bytes is not None:
            overhead = min(overhead, cur.rss_bytes)  # a split older than the RSS figure cannot exceed it
    if balloon is not None:
        if not balloon.present:
            reasons.setdefault("balloon_bytes", no_guest_stats_reason(balloon))
        if balloon.guest_available_bytes is None:
            reasons.setdefault("guest_available_bytes", no_guest_stats_reason(balloon))
    else:
        reasons.setdefault("guest_available_bytes", reasons.get("balloon_bytes", "no libvirt balloon figures"))
    if cg is not None and cg.psi_some_us is not None and cg.psi_full_us is None:
        reasons.setdefault("psi_full_pct", "the cgroup's memory.pressure has no full line")
    fallback = {"psi_full_pct": reasons.get("psi_some_pct", ""), "overhead_bytes": "smaps not read"}
    vm = VmMemory(
        domain=cur.domain,
        pid=cur.pid,
        configured_bytes=cur.configured_bytes,
        balloon_bytes=balloon.current_bytes if balloon else None,
        rss_bytes=cur.rss_bytes,
        overhead_bytes=overhead,
        major_faults_per_s=_rate(prev.major_faults if prev else None, cur.major_faults, dt_s),
        swap_in_bytes_per_s=_rate(pcg.swap_in_pages if pcg else None, cg.swap_in_pages if cg else None, dt_s, page),
        psi_some_pct=_rate(pcg.psi_some_us if pcg else None, cg.psi_some_us if cg else None, dt_s, 1e-4),
        psi_full_pct=_rate(pcg.psi_full_us if pcg else None, cg.psi_full_us if cg else None, dt_s, 1e-4),
        oom_events=cg.oom_kill if cg else None,
        guest_available_bytes=balloon.guest_available_bytes if balloon else None,
        detail=VmDetail(
            pss_bytes=split.pss if split else None,
            guest_ram_rss_bytes=split.guest_ram_rss if split else None,
            split_age_s=None,
            hugepage_backed=split.hugepage_backed if split else None,
            thp_bytes=split.thp_bytes if split else None,
            ksm_merged_bytes=cur.ksm_merging_pages * page if cur.ksm_merging_pages is not None else None,
            balloon_maximum_bytes=balloon.maximum_bytes if balloon else None,
            guest_total_bytes=balloon.guest_total_bytes if balloon else None,
            guest_unused_bytes=balloon.guest_unused_bytes if balloon else None,
            guest_major_faults_per_s=_rate(pballoon.guest_major_faults if pballoon else None,
                                           balloon.guest_major_faults if balloon else None, dt_s),
            guest_swap_in_bytes_per_s=_rate(pballoon.guest_swap_in_bytes if pballoon else None,
                                            balloon.guest_swap_in_bytes if balloon else None, dt_s),
            guest_swap_out_bytes_per_s=_rate(pballoon.guest_swap_out_bytes if pballoon else None,
                                             balloon.guest_swap_out_bytes if balloon else None, dt_s),
            memory_high_events=cg.high_events if cg else None,
            memory_max_events=cg.max_events if cg else None,
            swap_in_source=cg.swap_in_source if cg else None,
            cgroup=cg.v2_path if cg else None,
        ),
    )  # fmt: skip
    vm.null_reasons = _null({k: getattr(vm, k) for k in _VM_HEADLINE}, reasons, fallback)
    if "memory_high_events" in reasons:
        vm.null_reasons["memory_high_events"] = reasons["memory_high_events"]
    return vm


def memory_report(prev: Reading, cur: Reading) -> MemoryReport:
    """What happened between two readings of the same host."""
    dt_ns = cur.host.mono_ns - prev.host.mono_ns
    if dt_ns <= 0:
        raise ValueError("readings out of order: the current one is not later than the previous one")
    dt_s = dt_ns / 1e9
    before = {vm.pid: vm for vm in prev.vms}
    vms = [vm_memory(before.get(vm.pid), vm, dt_s, cur.host.page_size) for vm in cur.vms]
    for vm, reading in zip(vms, cur.vms, strict=True):
        if reading.split is not None:
            vm.detail.split_age_s = round((cur.host.mono_ns - reading.split.mono_ns) / 1e9, 1)
    host = host_memory(prev.host, cur.host, vms, dt_s)
    vms.sort(key=lambda v: (v.psi_some_pct or 0.0, v.rss_bytes or 0), reverse=True)
    return MemoryReport(time=cur.host.wall, interval_s=round(dt_s, 6), host=host, vms=vms)
