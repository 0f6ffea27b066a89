"""`kvmkit bench`: storage benchmarks done right, with fio as the engine.

Each command is a thin call into the library (engine.run_suite, lint.lint_file, report.write_html); --json
prints the same records those functions return.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kvmkit.bench import compare as compare_mod
from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.jobs import FioInvocation
from kvmkit.bench.lint import lint_file
from kvmkit.bench.report import write_html
from kvmkit.bench.runner import HostRunner
from kvmkit.bench.schema import BenchRun, load_run
from kvmkit.bench.suites import SUITES, SuiteContext
from kvmkit.bench.units import parse_size
from kvmkit.cliinput import existing_file
from kvmkit.errors import InvalidInput, OperationFailed
from kvmkit.output import console, err_console, print_json, print_table

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _qds(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput(f"--qd wants comma-separated integers, got {text!r}") from None


def _us(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def print_run(run: BenchRun) -> None:
    rows = []
    for job in run.jobs:
        c = compare_mod.cell(job)
        rows.append(
            [
                job.name,
                job.phase,
                f"{c.iops:,.0f}",
                f"{c.mib_s:,.1f}",
                _us(c.p50_us),
                _us(c.p99_us),
                _us(c.p99_9_us),
                _us(c.max_us),
                _us(c.cpu_us_per_io),
            ]
        )
    print_table(
        f"{run.label} [{run.status}]",
        ["job", "phase", "IOPS", "MiB/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "CPU µs/IO"],
        rows,
    )
    if run.steady_state:
        s = run.steady_state
        state = f"reached at round {s.round}" if s.reached else f"NOT reached in {len(s.rounds)} rounds"
        console.print(
            f"steady state ({s.tracking}): {state}; range {s.range_pct or 0:.1f} % (≤ 20), "
            f"slope {s.slope_pct or 0:.1f} % (≤ 10)"
        )
        if s.cells:
            print_table(
                "steady-state window averages" if s.reached else "last window averages (NOT steady)",
                ["cell", "IOPS", "p99 µs"],
                [[c.cell, f"{c.iops:,.0f}", _us(c.p99_ns / 1000 if c.p99_ns else None)] for c in s.cells],
            )
    r = run.resources
    console.print(
        f"time {r.wall_s:.1f} s (fio {r.fio_wall_s:.1f} s) · peak RSS "
        f"kvmkit {r.kvmkit_peak_rss_kib / 1024:.0f} MiB, fio {r.fio_peak_rss_kib / 1024:.0f} MiB"
    )


@app.command("run")
def run_cmd(
    suite: Annotated[str, typer.Option("--suite", "-s", help=f"One of: {', '.join(SUITES)}.")],
    target: Annotated[str, typer.Option("--target", "-t", help="A file (created if missing) or a block device.")],
    size: Annotated[str | None, typer.Option(help="Working set, e.g. 4G. Default: the device, or 2 × RAM.")] = None,
    destructive: Annotated[str | None, typer.Option(help="Repeat the target path to allow overwriting it.")] = None,
    runtime: Annotated[float, typer.Option(help="Seconds per measured job.")] = 30.0,
    ramp: Annotated[float, typer.Option(help="Ramp seconds before each measured job.")] = 5.0,
    ioengine: Annotated[str, typer.Option(help="fio engine: io_uring, libaio …")] = "io_uring",
    qd: Annotated[str | None, typer.Option(help="Sweep queue depths, e.g. 1,4,16,64 (default 1…128).")] = None,
    max_rounds: Annotated[int, typer.Option(help="snia: give up on steady state after this many.")] = 25,
    precondition_cap: Annotated[str | None, typer.Option(help="snia: cap the 2 × capacity fill.")] = None,
    snia_matrix: Annotated[str, typer.Option(help="snia: 'reduced' or 'tracking' (4k write only).")] = "reduced",
    keep_file: Annotated[bool, typer.Option(help="Keep a file kvmkit created, filled, for reuse.")] = False,
    label: Annotated[str | None, typer.Option(help="Name of this run in comparisons.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the result JSON here.")] = None,
    vm: Annotated[list[str] | None, typer.Option("--vm", help="Run fio inside this VM (guest agent); the target "
                                                              "is a path in the guest. Repeat for an aggregate "
                                                              "over several VMs at once.")] = None,
    connect: Annotated[str | None, typer.Option("--connect", "-c", help="libvirt URI for --vm.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run a suite against a target; prints a table (or --json) with tails, CPU per I/O, time and peak RSS."""
    if out is not None and not out.parent.is_dir():
        raise InvalidInput(f"--out {out}: folder {out.parent} does not exist")
    options = BenchOptions(
        size_bytes=parse_size(size) if size else None,
        destructive=destructive,
        runtime_s=runtime,
        ramp_s=ramp,
        ioengine=ioengine,
        qds=_qds(qd),
        max_rounds=max_rounds,
        precondition_bytes=parse_size(precondition_cap) if precondition_cap else None,
        snia_matrix=snia_matrix,
        keep_file=keep_file,
        label=label,
    )
    vm = list(dict.fromkeys(vm or []))  # `--vm a --vm a` is one VM, not two fio runs racing in one guest
    if len(vm) > 1:
        _run_multi(vm, connect, suite, target, options, as_json)
        return
    if not vm:
        result = run_suite(suite, target, HostRunner(), options)
    else:
        result = _run_in_vm(vm[0], connect, suite, target, options)
    for warning in result.warnings:
        err_console.print(f"[bold yellow]WARNING[/]: {warning}", highlight=False)
    if out is not None:
        out.write_text(result.to_json() + "\n")
    if as_json:
        print_json(result)
    else:
        print_run(result)
    if result.status != "ok":
        where = f"; partial results in {out}" if out else ""
        raise OperationFailed(f"bench run {result.status} after {len(result.jobs)} jobs: {result.error}{where}")


@app.command("lint")
def lint_cmd(
    job_files: Annotated[list[Path], typer.Argument(help="fio job files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print every finding as JSON, each with its file.")] = False,
) -> None:
    """Flag benchmark mistakes in fio job files; exit 1 when any is an error."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_file = [(path, lint_file(existing_file(path, "job file"), ram)) for path in dict.fromkeys(job_files)]
    if as_json:
        print_json([{"file": path, **f.__dict__} for path, findings in per_file for f in findings])
    else:
        for path, findings in per_file:  # through the console: -q silences it
            lines = [finding.render(str(path)) for finding in findings]
            errors = sum(f.severity == "error" for f in findings)
            lines.append(f"{path}: {errors} error(s), {len(findings) - errors} warning(s)")
            console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    if any(f.severity == "error" for _, findings in per_file for f in findings):
        raise typer.Exit(1)


@app.command("compare")
def compare_cmd(
    results: Annotated[list[Path], typer.Argument(help="Result files from `kvmkit bench run --out`.")],
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Side-by-side table of runs (IOPS, tails, CPU per I/O); optionally an HTML report with curves."""
    runs = [load_run(existing_file(path, "result file")) for path in results]
    if html is not None and not html.parent.is_dir():
        raise InvalidInput(f"--html {html}: folder {html.parent} does not exist")
    table = compare_mod.rows(runs)
    if as_json:
        print_json({
            "runs": [r.label for r in runs],
            "notes": compare_mod.machine_notes(runs),
            "rows": [{"job": row.job, "cells": [c.__dict__ if c else None for c in row.cells]} for row in table],
        })
    elif not table:
        console.print("bench compare: the runs have no measured jobs to compare")
    else:
        columns = ["job"] + [f"{r.label} IOPS / p99 µs" for r in runs] + [f"Δ IOPS {r.label}" for r in runs[1:]]
        lines = []
        for row in table:
            cells = [f"{c.iops:,.0f} / {_us(c.p99_us)}" if c else "" for c in row.cells]
            deltas = [
                _us(row.iops_change_pct(i)) + " %" if row.iops_change_pct(i) is not None else ""
                for i in range(1, len(runs))
            ]
            lines.append([row.job, *cells, *deltas])
        print_table("kvmkit bench compare", columns, lines)
        for note in compare_mod.machine_notes(runs):
            err_console.print(f"[yellow]note[/]: {note}", highlight=False)
    if html is not None:
        write_html(runs, html)
        if not as_json:
            console.print(f"report: {html}")


@app.command("jobs")
def jobs_cmd(
    suite: Annotated[str, typer.Option("--suite", "-s", help=f"One of: {', '.join(SUITES)}.")],
    target: Annotated[str, typer.Option("--target", "-t", help="File or device the job file names.")],
    size: Annotated[str, typer.Option(help="Working set, e.g. 64G.")] = "64G",
    runtime: Annotated[float, typer.Option(help="Seconds per measured job.")] = 30.0,
    ramp: Annotated[float, typer.Option(help="Ramp seconds before each measured job.")] = 5.0,
    ioengine: Annotated[str, typer.Option(help="fio engine.")] = "io_uring",
    as_json: Annotated[bool, typer.Option("--json", help="Print {suite, notes, job_file} as JSON.")] = False,
) -> None:
    """Print the fio job file a suite starts with, to read, lint or run by hand; nothing is run or probed."""
    ctx = SuiteContext(
        filename=target,
        kind="block" if target.startswith("/dev/") else "file",
        size_bytes=parse_size(size),
        ioengine=ioengine,
        runtime_s=runtime,
        ramp_s=ramp,
    )
    if suite not in SUITES:
        raise InvalidInput(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)}")
    step = next(step for step in SUITES[suite](ctx) if isinstance(step, FioInvocation))
    notes = [f"kvmkit bench {suite}: first fio invocation"]
    if suite in ("latency-under-load", "snia"):
        notes.append("later invocations depend on measured results (rate_iops, steady-state rounds)")
    if as_json:
        print_json({"suite": suite, "notes": notes, "job_file": step.ini()})
        return
    for note in notes:
        typer.echo(f"; {note}")
    typer.echo(step.ini(), nl=False)


@app.command("suites")
def suites_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print [{name, measures}] as JSON.")] = False
               ) -> None:
    """List the suites and what each measures."""
    suites = [{"name": name, "measures": (build.__doc__ or "").strip().splitlines()[0]}
              for name, build in SUITES.items()]
    if as_json:
        print_json(suites)
        return
    for suite in suites:
        typer.echo(f"{suite['name']:20} {suite['measures']}")


def _run_in_vm(vm: str, connect: str | None, suite: str, target: str, options: BenchOptions) -> BenchRun:
    """The same suite inside a VM: fio runs in the guest through qemu-guest-agent's guest-exec."""
    from kvmkit import config
    from kvmkit.bench.command_runner import CommandRunner
    from kvmkit.virt import agent
    from kvmkit.virt.connection import connection, lookup

    with connection(connect or config.load().libvirt_uri) as conn:
        dom = lookup(conn, vm)

        def exec_fn(argv: list[str], timeout_s: float) -> agent.ExecResult:
            return agent.guest_exec(dom, argv, timeout_s=timeout_s)

        return run_suite(suite, target, CommandRunner(f"vm:{vm}", exec_fn), options)


@app.command("paths")
def paths_cmd(
    size: Annotated[str, typer.Option(help="Size of the shared backing file.")] = "256M",
    runtime: Annotated[float, typer.Option(help="Seconds per measured job.")] = 3.0,
    only: Annotated[list[str] | None, typer.Option("--only", help="Only these paths (name or kind).")] = None,
    stall_retries: Annotated[int, typer.Option(
        help="Measure a path again in a fresh VM when its guest stalls (fio past its deadline); 0: a stall fails.",
    )] = 0,
    connect: Annotated[str | None, typer.Option("--connect", "-c", help="libvirt URI.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write every run's JSON here (a list).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Host vs virtio-blk (native, io_uring, threads, iothread) vs vhost-user-blk, same file, one run, on the lab."""
    from kvmkit import config
    from kvmkit.benchmarks import paths

    settings = config.load()
    say = err_console.print if as_json else console.print
    result = paths.run(settings.lab_path, connect or settings.libvirt_uri, size_mib=parse_size(size) >> 20,
                       runtime_s=runtime, only=only, stall_retries=stall_retries,
                       progress=lambda m: say(f"[dim]paths:[/] {m}"))
    if out is not None:
        out.write_text("[" + ",\n".join(r.to_json() for r in result.runs) + "]\n")
    if as_json:
        print_json({k: v for k, v in result if k != "runs"})
        return
    print_table(f"storage paths to one {size} file (quick suite, {runtime:g} s jobs)",
                ["path", "randread 4k QD32", "randwrite 4k QD32", "randread QD1 p99 µs", "read 1M QD32 MiB/s",
                 "CPU µs/IO", "vs host"],
                [(r.path + (f" ({r.attempts} attempts)" if r.attempts > 1 else ""), r.randread_4k_qd32_iops,
                  r.randwrite_4k_qd32_iops, r.randread_4k_qd1_p99_us,
                  r.read_1m_qd32_mib_s, r.cpu_us_per_io_randread,
                  f"{r.vs_host_randread:.3f}×" if r.vs_host_randread is not None else "") for r in result.rows])
    fio_mib = max(r.resources.fio_peak_rss_kib for r in result.runs) / 1024  # the host's run: unknown in a guest
    console.print(f"{result.seconds:.1f} s · peak RSS kvmkit {result.peak_rss_mib:.0f} MiB, fio on the host "
                  f"{fio_mib:.0f} MiB")
    console.print(f"[yellow]{result.note}[/]")


def _run_multi(vms: list[str], connect: str | None, suite: str, target: str, options: BenchOptions,
               as_json: bool) -> None:
    from kvmkit import config
    from kvmkit.bench import multi

    result = multi.run(connect or config.load().libvirt_uri, vms, suite, target, options,
                       progress=lambda m: err_console.print(f"[dim]multi:[/] {m}"))
    if as_json:
        print_json(result)
    else:
        print_table(f"{suite} in {len(vms)} VMs at once ({', '.join(vms)})",
                    ["job", "VMs", "total IOPS", "total MiB/s", "worst p99 µs"],
                    [(j.name, j.vms, f"{j.total_iops:,.0f}", j.total_mib_s, j.worst_p99_us) for j in result.jobs])
    failed = [r for r in result.runs if r.status != "ok"]
    if failed:
        raise OperationFailed(f"{len(failed)} of {len(vms)} VM runs failed: {failed[0].error}")


@app.command("net")
def net_cmd(
    vm: Annotated[list[str] | None, typer.Option("--vm", help="Also measure this VM ↔ host (repeatable); the "
                                                              "guest needs iperf3 and sockperf.")] = None,
    host_ip: Annotated[str | None, typer.Option("--host-ip", help="The host's address the guests reach "
                                                                  "(e.g. the bridge's).")] = None,
    guest_ip: Annotated[str | None, typer.Option("--guest-ip", help="Set this address/prefix on the guest's "
                                                                    "NIC first (guests without DHCP).")] = None,
    pair: Annotated[list[str] | None, typer.Option("--pair", help="Also measure guest ↔ guest: SERVER_VM,CLIENT_VM "
                                                               "(repeatable); both guests need iperf3 and sockperf.")
                    ] = None,
    set_ip: Annotated[list[str] | None, typer.Option("--set-ip", help="VM=ADDRESS/PREFIX: put this address on the "
                                                                      "VM's NIC first (repeatable).")] = None,
    iface: Annotated[str, typer.Option("--iface", help="The guests' NIC for --guest-ip, --set-ip and --pair.")
                     ] = "eth0",
    reference: Annotated[bool, typer.Option("--reference/--no-reference",
                                            help="Measure the netns ↔ netns anchor first.")] = True,
    streams: Annotated[int, typer.Option(help="Parallel TCP streams.", min=1, max=128)] = 4,
    runs: Annotated[int, typer.Option(help="Measured runs per path (after a warm-up).", min=1, max=50)] = 3,
    seconds: Annotated[float, typer.Option(help="Seconds per run.", min=1, max=600)] = 3.0,
    connect: Annotated[str | None, typer.Option("--connect", "-c", help="libvirt URI for --vm.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Network path: TCP throughput (several streams), small-packet rate, request/response latency percentiles
    and host CPU per Gbit/s, for host netns ↔ netns (the anchor), each --vm ↔ host and each --pair guest ↔ guest;
    the backend named."""
    import contextlib

    from kvmkit import config
    from kvmkit.bench import net, netvm
    from kvmkit.bench.netpaths import NetnsPath
    from kvmkit.virt.connection import connection, lookup

    vms = list(dict.fromkeys(vm or []))
    pairs = [netvm.parse_pair(p) for p in dict.fromkeys(pair or [])]
    addresses = dict(netvm.parse_set_ip(s) for s in set_ip or [])
    if vms and host_ip is None:
        raise InvalidInput("--vm needs --host-ip: the host address the guest sends to")
    if not vms and not pairs and not reference:
        raise InvalidInput("nothing to measure: give --vm or --pair, or keep the reference path")
    opts = net.NetOptions(streams=streams, runs=runs, seconds=seconds)
    progress = (lambda _m: None) if as_json else (lambda m: err_console.print(m, highlight=False))
    with contextlib.ExitStack() as stack:
        paths, notes = [], []
        if reference:
            paths.append(stack.enter_context(NetnsPath(str(os.getpid())).up()))
        if vms or pairs or addresses:
            conn = stack.enter_context(connection(connect or config.load().libvirt_uri))
            for name, cidr in addresses.items():
                netvm.set_address(lookup(conn, name), cidr, iface, "--set-ip")
            for name in vms:
                dom = lookup(conn, name)
                paths.append(netvm.guest_path(dom, host_ip or "", guest_ip, iface))
                notes += netvm.notes_for(dom)
            for server, client in pairs:
                doms = lookup(conn, server), lookup(conn, client)
                paths.append(netvm.pair_path(*doms, iface))
                notes += [n for d in doms for n in netvm.notes_for(d)]
        result = net.run(paths, opts, list(dict.fromkeys(notes)), progress)
    if as_json:
        print_json(result)
        return
    print_net(result)


def _spread(s, fmt: str = "{:,.2f}") -> str:
    return f"{fmt.format(s.median)} ({fmt.format(s.low)}–{fmt.format(s.high)})"


def print_net(result) -> None:
    rows = []
    for p in result.paths:
        lat = p.latency_us
        rows.append([p.path, p.backend, _spread(p.gbit_s), f"{p.vs_reference_gbit:.2f}×" if p.vs_reference_gbit
                     else "", _spread(p.small_pps, "{:,.0f}"),
                     f"{lat.get('p50', 0):,.0f} / {lat.get('p99', 0):,.0f} / {lat.get('max', 0):,.0f}",
                     _spread(p.host_cpu_cores_per_gbit),
                     _spread(p.qemu_cpu_cores_per_gbit) if p.qemu_cpu_cores_per_gbit else "—"])
    print_table(f"kvmkit bench net — {result.options.streams} streams, {result.options.runs} runs × "
                f"{result.options.seconds:g} s after a warm-up; median (low–high)",
                ["path", "backend", "TCP Gbit/s", "vs ref", "64 B UDP pps", "RTT p50/p99/max µs",
                 "host cores per Gbit/s", "QEMU cores per Gbit/s"], rows)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wall {result.wall_s:.1f} s, peak RSS {result.peak_rss_mib:.0f} MiB")
