"""Pure arithmetic from two readings to an interval report. No I/O, no clocks: everything comes in the
readings.

congestion % of a thread = Δ(run-queue wait ns) / Δt: the share of the interval the thread was runnable
but not running. For a vCPU thread that is exactly the steal time its guest sees. utilisation % = Δ(run
ns) / Δt. A thread seen only once, or whose counters went backwards (tid reused), has no baseline and is
left out of the percentages; a VM seen for the first time is listed as skipped ("no baseline yet").
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmkit.congestion.model import (
    CgroupReading,
    CgroupReport,
    HostReport,
    IntervalReport,
    NumaReport,
    Reading,
    SkipReport,
    ThreadGroupReport,
    ThreadKind,
    ThreadReading,
    VcpuReport,
    VmReport,
)
from kvmkit.sampling.percentile import percentile


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def _pct(delta_ns: float, dt_ns: int) -> float:
    return round(100.0 * delta_ns / dt_ns, 3)


def _delta(prev: ThreadReading | None, cur: ThreadReading) -> tuple[int, int] | None:
    if prev is None or cur.run_ns < prev.run_ns or cur.wait_ns < prev.wait_ns:
        return None
    return cur.run_ns - prev.run_ns, cur.wait_ns - prev.wait_ns


def _throttled(prev: ThreadReading | None, cur: ThreadReading, wait_ns: int) -> int | None:
    """Δ throttled ns of the vCPU's cgroup, capped at the thread's own Δ wait (a cgroup shared by several
    threads, or one whose runqueues on other CPUs were throttled, cannot make this thread wait longer than it did)."""
    if prev is None or prev.throttled_ns is None or cur.throttled_ns is None or cur.throttled_ns < prev.throttled_ns:
        return None
    return min(wait_ns, cur.throttled_ns - prev.throttled_ns)


def _group(deltas: Sequence[tuple[int, int]], dt_ns: int) -> ThreadGroupReport:
    return ThreadGroupReport(
        threads=len(deltas),
        utilisation_pct=_pct(sum(d[0] for d in deltas), dt_ns),
        congestion_pct=_pct(sum(d[1] for d in deltas), dt_ns),
    )


def _cgroup(prev: CgroupReading | None, cur: CgroupReading | None, dt_ns: int) -> CgroupReport | None:
    if cur is None:
        return None
    report = CgroupReport(path=cur.path)
    if prev is None or prev.path != cur.path:
        return report
    if prev.psi and cur.psi:
        report.psi_some_pct = _pct((cur.psi.some_total_us - prev.psi.some_total_us) * 1000, dt_ns)
        if prev.psi.full_total_us is not None and cur.psi.full_total_us is not None:
            report.psi_full_pct = _pct((cur.psi.full_total_us - prev.psi.full_total_us) * 1000, dt_ns)
    if prev.throttled_ns is not None and cur.throttled_ns is not None:
        report.throttled_pct = _pct(cur.throttled_ns - prev.throttled_ns, dt_ns)
    if prev.nr_throttled is not None and cur.nr_throttled is not None:
        report.throttled_periods = cur.nr_throttled - prev.nr_throttled
    return report


def interval_report(prev: Reading, cur: Reading) -> IntervalReport:
    """What happened between two readings of the same host."""
    dt_ns = cur.mono_ns - prev.mono_ns
    if dt_ns <= 0:
        raise ValueError("readings out of order: the current one is not later than the previous one")
    before = {(vm.pid, t.tid): t for vm in prev.vms for t in vm.threads}
    prev_cgroups = {vm.pid: vm.cgroup for vm in prev.vms}
    skipped = [SkipReport(what=s.what, reason=s.reason) for s in cur.skipped]
    vms: list[VmReport] = []
    all_vcpus: list[tuple[VcpuReport, ThreadReading, int, int]] = []
    qemu_run_ns = 0
    vcpus_allocated = 0
    for vm in cur.vms:
        vcpu_threads = [t for t in vm.threads if t.cls.kind is ThreadKind.VCPU]
        vcpus_allocated += len(vcpu_threads)
        if vm.pid not in prev_cgroups:
            reason = "new since the previous reading: no baseline yet"
            skipped.append(SkipReport(what=vm.domain, reason=reason))
            continue
        groups: dict[ThreadKind, list[tuple[int, int]]] = {kind: [] for kind in ThreadKind}
        vcpus: list[VcpuReport] = []
        for thread in vm.threads:
            delta = _delta(before.get((vm.pid, thread.tid)), thread)
            if delta is None:
                continue
            groups[thread.cls.kind].append(delta)
            qemu_run_ns += delta[0]
            if thread.cls.kind is ThreadKind.VCPU:
                throttled = _throttled(before.get((vm.pid, thread.tid)), thread, delta[1])
                report = VcpuReport(
                    vcpu=thread.cls.vcpu or 0,
                    tid=thread.tid,
                    utilisation_pct=_pct(delta[0], dt_ns),
                    congestion_pct=_pct(delta[1], dt_ns),
                    contention_pct=None if throttled is None else _pct(delta[1] - throttled, dt_ns),
                    throttled_pct=None if throttled is None else _pct(throttled, dt_ns),
                )
                vcpus.append(report)
                all_vcpus.append((report, thread, delta[0], delta[1] - (throttled or 0)))
        vcpus.sort(key=lambda v: v.vcpu)
        congestion = [v.congestion_pct for v in vcpus]
        split = bool(vcpus) and all(v.throttled_pct is not None for v in vcpus)
        contention = [v.slo_pct for v in vcpus]
        vms.append(
            VmReport(
                domain=vm.domain,
                pid=vm.pid,
                vcpus_allocated=len(vcpu_threads),
                utilisation_pct=_mean([v.utilisation_pct for v in vcpus]),
                congestion_pct=_mean(congestion),
                congestion_max_pct=max(congestion, default=0.0),
                vcpus=vcpus,
                emulator=_group(groups[ThreadKind.EMULATOR], dt_ns),
                iothreads=_group(groups[ThreadKind.IOTHREAD], dt_ns),
                vhost=_group(groups[ThreadKind.VHOST], dt_ns),
                cgroup=_cgroup(prev_cgroups[vm.pid], vm.cgroup, dt_ns),
                contention_pct=_mean(contention) if split else None,
                contention_max_pct=max(contention, default=0.0) if split else None,
                throttled_pct=_mean([v.throttled_pct or 0.0 for v in vcpus]) if split else None,
            )
        )
    vms.sort(key=lambda v: v.congestion_pct, reverse=True)
    host_congestion = [v.congestion_pct for v, *_ in all_vcpus]
    host_contention = [v.slo_pct for v, *_ in all_vcpus]
    split = bool(all_vcpus) and all(v.throttled_pct is not None for v, *_ in all_vcpus)
    psi_some_pct = None
    if prev.host_psi and cur.host_psi:
        psi_some_pct = _pct((cur.host_psi.some_total_us - prev.host_psi.some_total_us) * 1000, dt_ns)
    host = HostReport(
        pcpus=cur.pcpus,
        vcpus_allocated=vcpus_allocated,
        oversubscription=round(vcpus_allocated / cur.pcpus, 4) if cur.pcpus else 0.0,
        vcpu_demand=round(sum(run + wait for *_, run, wait in all_vcpus) / dt_ns, 4),
        vcpu_load_pct=round(_pct(sum(run for *_, run, _w in all_vcpus), dt_ns) / max(cur.pcpus, 1), 3),
        congestion_pct=_mean(host_congestion),
        congestion_p95_pct=round(percentile(host_congestion, 95), 3),
        contention_pct=_mean(host_contention) if split else None,
        contention_p95_pct=round(percentile(host_contention, 95), 3) if split else None,
        throttled_pct=_mean([v.throttled_pct or 0.0 for v, *_ in all_vcpus]) if split else None,
        psi_some_avg10=cur.host_psi.some_avg10 if cur.host_psi else None,
        psi_full_avg10=cur.host_psi.full_avg10 if cur.host_psi else None,
        psi_some_pct=psi_some_pct,
        **_host_load(prev, cur, qemu_run_ns, dt_ns),
        numa=numa_breakdown(cur.numa_nodes, [(t.cpu, v.congestion_pct) for v, t, *_ in all_vcpus]),
    )
    interval_s = round(dt_ns / 1e9, 6)
    return IntervalReport(time=cur.wall, interval_s=interval_s, host=host, vms=vms, skipped=skipped)


def _host_load(prev: Reading, cur: Reading, qemu_run_ns: int, dt_ns: int) -> dict[str, float]:
    """QEMU's share of the host's CPUs, the rest of the host's load, and steal from the layer below.

    The first two come from different clocks (schedstat ns, /proc/stat ticks of 1/USER_HZ s), so their
    difference is only good to about a tick per CPU per interval; it is floored at 0.
    """
    if prev.cpu is None or cur.cpu is None or cur.cpu.total <= prev.cpu.total or not cur.pcpus:
        return {}
    total = cur.cpu.total - prev.cpu.total
    qemu = 100.0 * qemu_run_ns / (dt_ns * cur.pcpus)
    busy = 100.0 * (cur.cpu.busy - prev.cpu.busy) / total
    return {
        "qemu_load_pct": round(qemu, 3),
        "other_load_pct": round(max(0.0, busy - qemu), 3),
        "steal_pct": round(100.0 * (cur.cpu.steal - prev.cpu.steal) / total, 3),
    }


def numa_breakdown(nodes: dict[int, frozenset[int]], vcpus: Sequence[tuple[int | None, float]]) -> list[NumaReport]:
    """Congestion of the vCPUs by the node of the CPU each last ran on; empty on single-node hosts."""
    out: list[NumaReport] = []
    for node, cpus in sorted(nodes.items()):
        here = [congestion for cpu, congestion in vcpus if cpu is not None and cpu in cpus]
        out.append(
            NumaReport(
                node=node,
                pcpus=len(cpus),
                vcpus_last_seen=len(here),
                congestion_pct=_mean(here),
            )
        )
    return out
