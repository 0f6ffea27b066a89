"""Human rendering of an interval report (rich): the `top` screen. Printing only, no arithmetic."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from kvmkit.congestion.model import IntervalReport
from kvmkit.sampling.view import fmt, footnote, vm_table


def _style(congestion_pct: float) -> str:
    return "bold red" if congestion_pct >= 10 else "yellow" if congestion_pct >= 2 else ""


def render(report: IntervalReport, limit: int = 40) -> Group:
    """Host line, then VMs by contention (worst first; congestion = contention + own throttling), then skips."""
    host = report.host
    header = Text(
        f"host: {host.pcpus} CPUs · {host.vcpus_allocated} vCPUs · oversubscription "
        f"{host.oversubscription:.2f} · vCPU load {host.vcpu_load_pct:.1f} % · congestion "
        f"{host.congestion_pct:.2f} % (p95 {host.congestion_p95_pct:.2f} %) = contention "
        f"{fmt(host.contention_pct, 2)} % + throttled {fmt(host.throttled_pct, 2)} % · PSI some avg10 "
        f"{fmt(host.psi_some_avg10, 2)} %  [{report.interval_s:.2f} s]"
    )
    table = vm_table(("VM", "pid", "vCPUs", "util %", "contention %", "throttled %", "congestion %",
                      "worst vCPU %", "emulator %", "iothreads %", "vhost %", "PSI some %"))  # fmt: skip
    for vm in sorted(report.vms, key=lambda v: v.slo_pct, reverse=True)[:limit]:
        cg = vm.cgroup
        table.add_row(
            vm.domain,
            str(vm.pid),
            str(vm.vcpus_allocated),
            fmt(vm.utilisation_pct),
            Text(fmt(vm.contention_pct, 2), style=_style(vm.slo_pct)),
            fmt(vm.throttled_pct, 2),
            fmt(vm.congestion_pct, 2),
            fmt(vm.contention_max_pct if vm.contention_max_pct is not None else vm.congestion_max_pct, 2),
            fmt(vm.emulator.utilisation_pct),
            fmt(vm.iothreads.utilisation_pct),
            fmt(vm.vhost.utilisation_pct),
            fmt(cg.psi_some_pct if cg else None),
        )
    parts: list[Text | Table] = [header, table]
    if report.skipped:
        parts.append(footnote("skipped", [(s.what, s.reason) for s in report.skipped], 5))
    return Group(*parts)
