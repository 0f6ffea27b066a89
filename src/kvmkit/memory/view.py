"""Human rendering of a memory report (rich): the `sample` table and the `top` screen. Printing only."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from kvmkit.memory.model import MemoryReport
from kvmkit.sampling.view import fmt, footnote, vm_table

MIB = 1 << 20


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.0f}"


def _style(psi_pct: float | None) -> str:
    return "" if psi_pct is None else "bold red" if psi_pct >= 10 else "yellow" if psi_pct >= 1 else ""


def render(report: MemoryReport, limit: int = 40) -> Group:
    """Host line, then VMs by memory pressure (worst first), then which figures are null and why."""
    h = report.host
    ratio = "-" if h.oversubscription is None else f"{h.oversubscription:.2f}"
    header = Text(
        f"host: RAM {mib(h.ram_bytes)} MiB · VMs configured {mib(h.vm_configured_bytes)} MiB · oversubscription "
        f"{ratio} · available {mib(h.available_bytes)} MiB · swap-in {fmt(h.swap_in_bytes_per_s, 0)} B/s · "
        f"PSI some/full avg10 {fmt(h.psi_some_avg10, 2)}/{fmt(h.psi_full_avg10, 2)} % · KSM saved "
        f"{mib(h.ksm_saved_bytes)} MiB, ksmd {fmt(h.ksm_cpu_pct, 2)} %  [{report.interval_s:.2f} s]"
    )
    table = vm_table(("VM", "pid", "config MiB", "balloon MiB", "RSS MiB", "overhead MiB", "majflt/s",
                      "swap-in B/s", "PSI some %", "PSI full %", "OOM", "guest avail MiB"))  # fmt: skip
    for vm in report.vms[:limit]:
        table.add_row(
            vm.domain, str(vm.pid), mib(vm.configured_bytes), mib(vm.balloon_bytes), mib(vm.rss_bytes),
            mib(vm.overhead_bytes), fmt(vm.major_faults_per_s), fmt(vm.swap_in_bytes_per_s, 0),
            Text(fmt(vm.psi_some_pct, 2), style=_style(vm.psi_some_pct)), fmt(vm.psi_full_pct, 2),
            "-" if vm.oom_events is None else str(vm.oom_events), mib(vm.guest_available_bytes),
        )  # fmt: skip
    parts: list[Text | Table] = [header, table]
    reasons = {f"host {k}": v for k, v in h.null_reasons.items()}
    for vm in report.vms[:3]:
        reasons.update({f"{vm.domain} {k}": v for k, v in vm.null_reasons.items()})
    if reasons:
        parts.append(footnote("null", list(reasons.items()), 6, " in --json"))
    return Group(*parts)
