"""`kvmkit memory`: RAM oversubscription against the memory pressure each VM feels: samples, live view, advice,
control.

Each command is a thin call into the package's functions; `--json` prints the same records they return.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from kvmkit import config
from kvmkit.confirm import YES
from kvmkit.errors import EnvironmentProblem, InvalidInput, OperationFailed
from kvmkit.memory import advise as advise_mod
from kvmkit.memory import control, history, policy, view
from kvmkit.memory.collector import MemCollector
from kvmkit.memory.model import MemoryReport
from kvmkit.memory.procfs import MemReader
from kvmkit.output import print_json, print_table
from kvmkit.sampling import commands as sampling_cli
from kvmkit.slo import commands as slo_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

_JSON = sampling_cli.JSON
_JOURNAL = slo_cli.journal_option("memory")
_PIDS = typer.Option(None, "--pid", help="Measure only these QEMU processes (repeatable); default: every QEMU.")
_URI = typer.Option(None, "--connect", "-c", help="libvirt URI for balloon figures (default: from the kvmkit config).")
_NO_LIBVIRT = typer.Option(False, "--no-libvirt", help="Do not ask libvirt (balloon figures are then null).")


@contextmanager
def reader(pids: list[int] | None, uri: str | None, no_libvirt: bool, live: bool = False) -> Iterator[MemReader]:
    """A reader with libvirt's balloon figures when reachable; an unreachable default libvirt makes them null with
    the reason, an unreachable `--connect URI` the user named is an error (exit 5), as everywhere else."""
    sampling_cli.check_pids(pids)
    balloons = None
    reason = "libvirt not asked (--no-libvirt)"
    if not no_libvirt:
        from kvmkit.memory.balloon import LibvirtBalloons

        target = uri or config.load().libvirt_uri
        try:
            balloons = LibvirtBalloons(target)
        except Exception as exc:  # libvirt.libvirtError, or no bindings: the rest is still measured
            message = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
            if uri is not None:
                raise EnvironmentProblem(f"cannot connect to libvirt at {uri}: {message}") from exc
            reason = f"libvirt unreachable at {target}: {message}"
    # a one-shot `sample` reads every smaps now; a long-lived reader (serve, top) spreads them over rounds
    budget = {"split_max_age_s": 600.0, "split_budget": 2} if live else {"split_max_age_s": 60.0, "split_budget": None}
    mem = MemReader(pids=pids or None, balloons=balloons.read if balloons else None, balloon_reason=reason, **budget)
    try:
        yield mem
    finally:
        mem.close()
        if balloons is not None:
            balloons.close()


def _reports(
    pids: list[int] | None, uri: str | None, no_libvirt: bool, interval: float, count: int | None
) -> Generator[MemoryReport, None, None]:
    with reader(pids, uri, no_libvirt) as mem:
        yield from MemCollector(mem).run(interval, count)


@app.command()
def sample(
    interval: float = sampling_cli.SAMPLE_INTERVAL,
    count: int = sampling_cli.SAMPLE_COUNT,
    as_json: bool = _JSON,
    history_file: Annotated[Path | None, typer.Option("--history", help="Also append each report here.")] = None,
    pids: list[int] | None = _PIDS,
    uri: str | None = _URI,
    no_libvirt: bool = _NO_LIBVIRT,
) -> None:
    """Measure `count` intervals; with --json one JSON object per line (per interval), for scripts."""
    sampling_cli.print_reports(_reports(pids, uri, no_libvirt, interval, count), history_file, as_json, view.render)


@app.command()
def top(
    interval: float = sampling_cli.TOP_INTERVAL,
    count: int | None = sampling_cli.TOP_COUNT,
    limit: int = typer.Option(40, help="Show at most this many VMs (most pressure first)."),
    pids: list[int] | None = _PIDS,
    uri: str | None = _URI,
    no_libvirt: bool = _NO_LIBVIRT,
) -> None:
    """A live table of VMs sorted by memory pressure, like top or virt-top."""
    with reader(pids, uri, no_libvirt, live=True) as mem:
        sampling_cli.show_live(MemCollector(mem).run(interval, count), interval, view.render, limit)


def _window(loaded: policy.MemPolicy, path: Path, window_s: float | None) -> list[MemoryReport]:
    return slo_cli.recorded_window(history.RECORDINGS, path, window_s or loaded.window_s)


def _print_standings(rows: list[policy.MemStanding], pct: float) -> None:
    print_table(
        f"p{pct:g} memory pressure vs SLO",
        ["VM", "class", "samples", "pressure %", "SLO %", "balloon MiB", "guest used MiB", "violated"],
        [[r.domain, r.vm_class or "-", r.samples, f"{r.pressure_pct:.2f}", r.slo_pressure_pct,
          view.mib(r.balloon_bytes), view.mib(r.guest_used_bytes), "YES" if r.violated else ""] for r in rows],
    )  # fmt: skip


@app.command()
def advise(
    history_file: Path = slo_cli.ADVISE_HISTORY,
    slo_pct: float | None = typer.Option(None, "--slo-pct", help="Memory pressure SLO in % (PSI some)."),
    policy_file: Annotated[Path | None, typer.Option("--policy", help="Take the strictest class SLO.")] = None,
    percentile: float = slo_cli.ADVISE_PERCENTILE,
    reserve_pct: float = typer.Option(5.0, help="RAM kept free for the host, % (the fit never counts it)."),
    as_json: bool = _JSON,
) -> None:
    """The highest RAM ratio (configured VM memory per byte of RAM) that kept pressure under the SLO; prints
    `ram_ratio` for the policy section of a `kvmkit plan` file."""
    slo_pct = slo_cli.slo_or_strictest(slo_pct, policy_file, policy.strictest_slo)
    result = advise_mod.advise(history.stream(history_file), slo_pct, percentile, reserve_pct)
    if as_json:
        print_json(result)
        return
    typer.echo(f"{result.intervals} intervals · highest recorded ratio {result.observed_ratio_max:g} · "
               f"observed p{percentile:g} pressure {result.observed_pressure_pct:g} % · highest recorded ratio "
               f"keeping ≤ {slo_pct:g} %: {result.observed_ok_ratio} · fit: {result.fit_ratio}")  # fmt: skip
    print_table("recorded", ["RAM ratio", "intervals", f"p{percentile:g} pressure %"],
                [[b.ram_ratio, b.intervals, b.pressure_pct] for b in result.bins])  # fmt: skip
    if result.ram_ratio is None:
        typer.echo("# no ratio kept the SLO: leave kvmkit plan's ram_ratio at 1.0 or lower")
    else:
        typer.echo(f"# for kvmkit plan ([policy]):\nram_ratio = {result.ram_ratio:g}")


@app.command("policy")
def policy_cmd(
    file: Annotated[Path, typer.Argument(help="Policy file (TOML): memory-pressure SLO per VM class.")],
    history_file: Path | None = slo_cli.POLICY_HISTORY,
    window: float | None = slo_cli.POLICY_WINDOW,
    as_json: bool = _JSON,
) -> None:
    """Check a policy file; with --history, show which VMs keep or break their class's SLO."""
    loaded = policy.load(file)
    rows = policy.standings(loaded, _window(loaded, history_file, window)) if history_file else []
    slo_cli.show_policy(
        loaded, rows, as_json,
        ["class", "priority", "SLO %", "domains", "balloon step %", "floor headroom %", "soft"],
        [[n, c.priority, c.slo_pressure_pct, " ".join(c.domains), c.balloon_step_pct, c.floor_headroom_pct,
          c.soft_limit] for n, c in loaded.classes.items()],
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
    uri: str | None = _URI,
    as_json: bool = _JSON,
) -> None:
    """Judge VMs against the policy; give sufferers their balloon back, reclaim from lower classes (via libvirt)."""
    loaded = policy.load(policy_file)
    target = uri or config.load().libvirt_uri
    if history_file:
        reports = _window(loaded, history_file, window)
    else:
        with reader(None, target, False) as mem:
            reports = list(MemCollector(mem).run(1.0, max(1, int(window or loaded.window_s))))
    rows = policy.standings(loaded, reports)
    backend = control.LibvirtMemory(target)
    slo_cli.enforce(rows, lambda current: policy.plan_actions(loaded, rows, current), backend, "memory",
                    journal, dry_run, as_json, lambda: _print_standings(rows, loaded.percentile), yes)  # fmt: skip


@app.command()
def revert(
    journal: Path | None = _JOURNAL,
    uri: str | None = _URI,
    dry_run: bool = slo_cli.REVERT_DRY_RUN,
    yes: bool = YES,
    as_json: bool = _JSON,
) -> None:
    """Put back every balloon target and soft limit `enforce` changed, newest first."""
    path = slo_cli.journal_path("memory", journal)
    backend = control.LibvirtMemory(uri or config.load().libvirt_uri)
    slo_cli.revert(backend, path, partial(control.revert, holds=control.holds), dry_run, as_json, yes,
                   "memory")


@app.command()
def bench(
    vms: int = typer.Option(500, help="VMs in the synthetic tree for the cost and the exporter RSS."),
    rounds: int = typer.Option(10, help="1 Hz rounds measured for the cost."),
    lab: bool = typer.Option(True, "--lab/--no-lab", help="Run the lab ground-truth checks (needs `kvmkit lab up`)."),
    lab_dir: Annotated[Path | None, typer.Option(help="Lab folder (default: the config's lab).")] = None,
    ksm: bool = typer.Option(True, "--ksm/--no-ksm", help="The KSM check (turns KSM on for its duration)."),
    pressure: bool = typer.Option(True, "--pressure/--no-pressure",
                                  help="The pressure check (adds a zram swap device for its duration)."),
    as_json: bool = _JSON,
) -> None:
    """Measured vs truth on the lab, the collector's own cost (synthetic N-VM tree and this host's real QEMUs),
    and the exporter's peak RSS."""
    from kvmkit.benchmarks import memory as bench_mod  # the CLI edge mounts the bench; the package never imports it

    if not 1 <= vms <= 10_000 or not 1 <= rounds <= 600:
        raise InvalidInput("give 1 ≤ --vms ≤ 10000 and 1 ≤ --rounds ≤ 600")
    folder = (lab_dir or config.load().lab_path) if lab else None
    result = bench_mod.run(vms, rounds, folder, ksm, pressure)
    if as_json:
        print_json(result)
        return
    if result.checks:
        print_table("lab ground truth (each check causes what it measures)",
                    ["check", "figure", "measured", "truth", "unit", "error", "tolerance", "ok"],
                    [[c.check, c.figure, c.measured, c.truth, c.unit,
                      "-" if c.error is None else f"{c.error:g}{' %' if c.relative else ''}",
                      f"{c.tolerance:g}{' %' if c.relative else ''}", "yes" if c.ok else "NO"]
                     for c in result.checks])  # fmt: skip
    print_table("collector cost at 1 Hz (thread CPU time)",
                ["kind", "VMs measured", "for VMs", "host ms/round", "µs/VM read", "µs/VM report", "smaps ms/VM",
                 "smaps every s", "% core: read (serve)", "% core: + report (sample)"],
                [[c.kind.upper() if c.kind == "synthetic" else c.kind, c.vms, c.extrapolated_to, c.host_ms_per_round,
                  c.read_us_per_vm, c.report_us_per_vm, c.smaps_ms_per_vm, c.split_max_age_s, c.read_core_pct,
                  c.sample_core_pct] for c in result.cost])  # fmt: skip
    if result.exporter:
        e = result.exporter
        typer.echo(f"exporter (both families, SYNTHETIC {e.vms} VMs): peak RSS {e.peak_rss_mib:.1f} MiB, "
                   f"scrape {e.scrape_ms_median:.0f} ms median, {e.body_kib:.0f} KiB")  # fmt: skip
    typer.echo(f"{result.seconds:.1f} s · peak RSS {result.peak_rss_mib:.0f} MiB")
    if not result.checks_ok:
        raise OperationFailed("a lab check missed its truth (see the NO rows)")
