"""`kvmkit congestion`: per-VM CPU congestion (the steal guests see) — live view, samples, exporter, control.

Each command is a thin call into the package's functions; `--json` prints the same records they return.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Annotated

import typer

from kvmkit import config
from kvmkit import serve as serve_mod
from kvmkit.benchmarks import congestion as bench_mod
from kvmkit.confirm import YES
from kvmkit.congestion import advise as advise_mod
from kvmkit.congestion import control, history, policy, view
from kvmkit.congestion.collector import Collector
from kvmkit.congestion.model import IntervalReport
from kvmkit.congestion.procfs import ProcReader
from kvmkit.errors import InvalidInput
from kvmkit.output import print_json, print_table
from kvmkit.sampling import commands as sampling_cli
from kvmkit.slo import commands as slo_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

_JSON = sampling_cli.JSON
_JOURNAL = slo_cli.journal_option("congestion")
_CONNECT = typer.Option(None, "--connect", "-c", help="libvirt URI (default: from the kvmkit config).")
_URI = typer.Option(None, "--uri", hidden=True, help="Old name of --connect.")
_PIDS = typer.Option(None, "--pid", help="Measure only these processes (repeatable); default: every QEMU.")


def _reader(pids: list[int] | None) -> ProcReader:
    sampling_cli.check_pids(pids)
    return ProcReader(pids=pids or None)


def _reports(pids: list[int] | None, interval: float, count: int | None) -> Generator[IntervalReport, None, None]:
    yield from Collector(_reader(pids)).run(interval, count)


@app.command()
def sample(
    interval: float = sampling_cli.SAMPLE_INTERVAL,
    count: int = sampling_cli.SAMPLE_COUNT,
    as_json: bool = _JSON,
    history_file: Annotated[
        Path | None, typer.Option("--history", help="Also append each report to this file.")
    ] = None,
    pids: list[int] | None = _PIDS,
) -> None:
    """Measure `count` intervals; with --json one JSON object per line (per interval), for scripts."""
    sampling_cli.print_reports(_reports(pids, interval, count), history_file, as_json, view.render)


@app.command()
def top(
    interval: float = sampling_cli.TOP_INTERVAL,
    count: int | None = sampling_cli.TOP_COUNT,
    limit: int = typer.Option(40, help="Show at most this many VMs (worst first)."),
    pids: list[int] | None = _PIDS,
) -> None:
    """A live table of VMs sorted by congestion, like top or virt-top."""
    sampling_cli.show_live(Collector(_reader(pids)).run(interval, count), interval, view.render, limit)


# `kvmkit serve` itself, under this name too (its options; the help says what it serves)
app.command(help="Prometheus exporter on http://ADDRESS:PORT/metrics until interrupted (= `kvmkit serve`: "
                 "congestion + memory).")(serve_mod.serve)  # fmt: skip


def _window(policy_: policy.Policy, path: Path, window_s: float | None) -> list[IntervalReport]:
    return slo_cli.recorded_window(history.RECORDINGS, path, window_s or policy_.window_s)


def _print_standings(rows: list[policy.VmStanding], pct: float) -> None:
    print_table(
        f"p{pct:g} contention vs SLO (congestion = contention + own throttling)",
        ["VM", "class", "samples", "contention %", "throttled %", "congestion %", "SLO %", "util %", "violated"],
        [[r.domain, r.vm_class or "-", r.samples, f"{r.contention_pct:.2f}",
          "-" if r.throttled_pct is None else f"{r.throttled_pct:.2f}", f"{r.congestion_pct:.2f}",
          r.slo_congestion_pct, f"{r.utilisation_pct:.1f}", "YES" if r.violated else ""] for r in rows],
    )  # fmt: skip


@app.command("policy")
def policy_cmd(
    file: Annotated[Path, typer.Argument(help="Policy file (TOML): SLO per VM class.")],
    history_file: Path | None = slo_cli.POLICY_HISTORY,
    window: float | None = slo_cli.POLICY_WINDOW,
    as_json: bool = _JSON,
) -> None:
    """Check a policy file; with --history, show which VMs keep or break their class's SLO."""
    loaded = policy.load(file)
    rows = policy.standings(loaded, _window(loaded, history_file, window)) if history_file else []
    slo_cli.show_policy(
        loaded, rows, as_json, ["class", "priority", "SLO %", "domains", "boost", "cap %"],
        [[n, c.priority, c.slo_congestion_pct, " ".join(c.domains), c.shares_boost, c.cap_pct]
         for n, c in loaded.classes.items()],
        (lambda: _print_standings(rows, loaded.percentile)) if history_file else None,
    )  # fmt: skip


@app.command()
def enforce(
    policy_file: Path = slo_cli.ENFORCE_POLICY,
    history_file: Path | None = slo_cli.ENFORCE_HISTORY,
    window: float | None = slo_cli.ENFORCE_WINDOW,
    dry_run: bool = slo_cli.ENFORCE_DRY_RUN,
    yes: bool = YES,
    journal: Path | None = _JOURNAL,
    connect: str | None = _CONNECT,
    uri: str | None = _URI,
    as_json: bool = _JSON,
) -> None:
    """Judge VMs against the policy; raise the weight of sufferers, cap noisy neighbours (via libvirt)."""
    loaded = policy.load(policy_file)
    if history_file:
        reports = _window(loaded, history_file, window)
    else:
        reports = list(Collector().run(1.0, max(1, int(window or loaded.window_s))))
    rows = policy.standings(loaded, reports)
    backend = control.LibvirtScheduler(connect or uri or config.load().libvirt_uri)
    slo_cli.enforce(rows, lambda current: policy.plan_actions(loaded, rows, current), backend, "congestion",
                    journal, dry_run, as_json, lambda: _print_standings(rows, loaded.percentile), yes)  # fmt: skip


@app.command()
def revert(
    journal: Path | None = _JOURNAL,
    connect: str | None = _CONNECT,
    uri: str | None = _URI,
    dry_run: bool = slo_cli.REVERT_DRY_RUN,
    yes: bool = YES,
    as_json: bool = _JSON,
) -> None:
    """Put back every scheduler parameter `enforce` changed, newest first."""
    path = slo_cli.journal_path("congestion", journal)
    backend = control.LibvirtScheduler(connect or uri or config.load().libvirt_uri)
    slo_cli.revert(backend, path, control.revert, dry_run, as_json, yes, "congestion")


@app.command()
def advise(
    history_file: Path = slo_cli.ADVISE_HISTORY,
    slo_pct: float | None = typer.Option(None, "--slo-pct", help="Congestion SLO in % (mean vCPU)."),
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Take the strictest class SLO from here.")
    ] = None,
    percentile: float = slo_cli.ADVISE_PERCENTILE,
    as_json: bool = _JSON,
) -> None:
    """The highest vCPU:CPU ratio that would have kept the SLO on this host (fluid model, see docs)."""
    slo_pct = slo_cli.slo_or_strictest(slo_pct, policy_file, policy.strictest_slo)
    result = advise_mod.advise(history.stream(history_file), slo_pct, percentile)
    if as_json:
        print_json(result)
        return
    best = "none (not even 0.25)" if result.max_oversubscription is None else f"{result.max_oversubscription:g}"
    typer.echo(f"{result.intervals} intervals · observed oversubscription {result.observed_oversubscription:g}"
               f" · observed p{percentile:g} contention {result.observed_congestion_pct:g} %"
               f" · mean vCPU demand {result.mean_vcpu_demand_pct:g} %"
               f" · CPU left for VMs {result.mean_capacity_pct:g} %")  # fmt: skip
    typer.echo(f"highest oversubscription keeping p{percentile:g} ≤ {slo_pct:g} %: {best}")
    print_table("predicted", ["vCPUs per CPU", f"p{percentile:g} congestion %"],
                [[p.oversubscription, p.congestion_pct] for p in result.predictions])  # fmt: skip


@app.command()
def bench(
    seconds: float = typer.Option(2.0, help="Measured seconds per accuracy case."),
    core: int | None = typer.Option(None, help="Core for the one-core cases (default: the least busy)."),
    cost_threads: int = typer.Option(500, help="Threads present while measuring the sampling cost."),
    cost_samples: int = typer.Option(5, help="1 Hz samples for the cost (0: skip)."),
    as_json: bool = _JSON,
) -> None:
    """Accuracy against controlled load (clock-gap and fair-share truths) and the cost of sampling."""
    if seconds <= 0 or seconds > 60:
        raise InvalidInput(f"--seconds {seconds}: give 0 < seconds ≤ 60")
    result = bench_mod.run(seconds, core, cost_threads, cost_samples)
    if as_json:
        print_json(result)
        return
    print_table("accuracy (percent of the interval a spinning thread waited)",
                ["busy", "cores", "measured mean %", "truth bracket % (clock gap)", "outside pp",
                 "worst thread pp", "fair share %", "fair pp", "other load %", "irq+steal %"],
                [[c.busy_threads, ",".join(map(str, c.cores)), c.measured_mean_pct,
                  f"{c.mean_truth_low_pct:.2f}–{c.mean_truth_high_pct:.2f}", c.outside_bracket_pp, c.max_error_pp,
                  c.fair_share_pct, c.fair_share_error_pp, c.other_load_pct, c.core_lost_pct]
                 for c in result.accuracy])  # fmt: skip
    if result.qemu:
        print_table("real QEMU guests spinning on one core (vCPU congestion %)",
                    ["guests", "core", "measured %", "fair share %", "worst pp", "other load %", "irq+steal %"],
                    [[q.guests, q.core, " ".join(f"{m:.2f}" for m in q.measured_pct), q.fair_share_pct,
                      q.worst_error_pp, q.other_load_pct, q.core_lost_pct] for q in result.qemu])  # fmt: skip
    if result.cost:
        cost = result.cost
        typer.echo(f"sampling {cost.threads} threads every {cost.interval_s:g} s: "
                   f"{cost.cpu_ms_per_sample:.2f} ms CPU per sample = {cost.core_pct:.2f} % of a core")  # fmt: skip
    typer.echo(f"{result.seconds:.1f} s · peak RSS {result.peak_rss_mib:.0f} MiB")


@app.command()
def domains(connect: str | None = _CONNECT, uri: str | None = _URI, as_json: bool = _JSON) -> None:
    """Running libvirt domains next to the QEMU processes found in /proc (libvirt is optional elsewhere)."""
    backend = control.LibvirtScheduler(connect or uri or config.load().libvirt_uri)
    try:
        names = backend.domains()
    finally:
        backend.close()
    found = {vm.domain: vm.pid for vm in ProcReader().read().vms}
    if as_json:
        print_json({"domains": [{"vm": n, "qemu_pid": found.get(n)} for n in names]})
        return
    print_table("domains", ["libvirt domain", "QEMU pid"], [[n, found.get(n, "not found")] for n in names])
