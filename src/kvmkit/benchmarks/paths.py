"""`kvmkit bench paths`: one backing file, every storage path to it, the same fio suite — in one run.

The host baseline runs fio on the file itself; then one lab VM sees the same file as its disk through each path
in turn — virtio-blk with cache=none and io=native / io_uring / threads, with and without an iothread, and
vhost-user-blk served by qemu-storage-daemon — and runs the suite in the guest through the agent. Under TCG
the guest's CPU is emulated, so absolute numbers are far below real KVM: only the comparison inside one run,
on one machine, means anything (the report says so).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from pydantic import BaseModel

from kvmkit.bench.command_runner import CommandRunner
from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.runner import HostRunner
from kvmkit.bench.schema import BenchRun
from kvmkit.errors import EnvironmentProblem, InvalidInput
from kvmkit.lab import domain, guest, lab, scratch
from kvmkit.lab.state import LabState, load
from kvmkit.rss import peak_rss_mib
from kvmkit.virt import agent
from kvmkit.virt.connection import connection

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
NOTE = ("TCG emulates the guest CPU: absolute figures are far below KVM's; compare paths only within this run, "
        "on this machine.")


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "host", "virtio-blk", "vhost-user-blk"
    io: str | None = None
    iothread: bool = False


VARIANTS = [
    Variant("host", "host"),
    Variant("virtio-blk native", "virtio-blk", io="native"),
    Variant("virtio-blk io_uring", "virtio-blk", io="io_uring"),
    Variant("virtio-blk threads", "virtio-blk", io="threads"),
    Variant("virtio-blk native + iothread", "virtio-blk", io="native", iothread=True),
    Variant("vhost-user-blk (qemu-storage-daemon)", "vhost-user-blk"),
]


class PathRow(BaseModel):
    path: str
    status: str
    randread_4k_qd32_iops: float | None
    randwrite_4k_qd32_iops: float | None
    randread_4k_qd1_p99_us: float | None
    read_1m_qd32_mib_s: float | None
    cpu_us_per_io_randread: float | None
    vs_host_randread: float | None
    attempts: int = 1


class PathsResult(BaseModel):
    note: str = NOTE
    size_mib: int
    runtime_s: float
    rows: list[PathRow]
    runs: list[BenchRun]
    seconds: float = 0.0
    peak_rss_mib: float = 0.0  # kvmkit's own; fio's is in each run's resources


def run(lab_dir: Path, uri: str, *, size_mib: int = 256, runtime_s: float = 3.0, only: list[str] | None = None,
        stall_retries: int = 0, progress: Progress = lambda _m: None) -> PathsResult:
    if not 0 <= stall_retries <= 3:
        raise InvalidInput(f"--stall-retries {stall_retries}: give 0 to 3")
    state = load(lab_dir)
    if state is None or state.pool is None:
        raise EnvironmentProblem("the lab is not up: run `kvmkit lab up` first")
    variants = [v for v in VARIANTS if not only or v.name in only or v.kind in only]
    if not variants:
        raise InvalidInput(f"--only matches no path; paths: {', '.join(v.name for v in VARIANTS)}")
    started = time.perf_counter()
    backing = state.pool.path / "bench-paths.raw"
    backing.unlink(missing_ok=True)
    with backing.open("wb") as fh:
        fh.truncate(size_mib << 20)
    options = BenchOptions(runtime_s=runtime_s, ramp_s=0.5, label="")
    runs: list[BenchRun] = []
    attempts: list[int] = []
    try:
        for variant in variants:
            progress(f"{variant.name} …")
            opts = BenchOptions(**{**options.__dict__, "label": variant.name})
            if variant.kind == "host":
                result, tries = run_suite("quick", str(backing), HostRunner(), BenchOptions(
                    **{**opts.__dict__, "destructive": str(backing)})), 1
            else:
                result, tries = _measure_in_guest(state, uri, variant, backing, opts, progress,
                                                  stall_retries)
            runs.append(result)
            attempts.append(tries)
            progress(f"{variant.name}: randread 4k QD32 {_iops(result, 'randread-4k-qd32'):.0f} IOPS")
    finally:
        backing.unlink(missing_ok=True)
    host = next((r for r in runs if r.label == "host"), None)
    rows = [_row(r, host, n) for r, n in zip(runs, attempts, strict=True)]
    return PathsResult(size_mib=size_mib, runtime_s=runtime_s, rows=rows, runs=runs,
                       seconds=round(time.perf_counter() - started, 1), peak_rss_mib=peak_rss_mib())


def _measure_in_guest(state: LabState, uri: str, variant: Variant, backing: Path, opts: BenchOptions,
                      progress: Progress, stall_retries: int) -> tuple[BenchRun, int]:
    """One path in a fresh VM; with `stall_retries`, a guest that stalled is measured again in a new VM.

    A stall (fio past its deadline) is a finding in itself on real hardware — a storage path that hangs — so by
    default it is a failed row with what the guest showed. Under TCG on a shared host a guest stalls for reasons of
    QEMU's own (4 in 48 runs here, requests lost in flight: docs/bench.md); there `--stall-retries N` asks for fresh
    VMs, and the row counts the attempts while the run keeps every earlier error and diagnosis. Any other failure is
    never retried.
    """
    earlier: list[str] = []
    attempt = 1
    while True:
        run = _in_guest(state, uri, variant, backing, opts)
        if not _stalled(run) or attempt > stall_retries:
            break
        progress(f"{variant.name}: the guest stalled ({run.error}); measuring again in a fresh VM")
        earlier += [f"attempt {attempt} failed: {run.error}", *(f"attempt {attempt}: {w}" for w in run.warnings)]
        attempt += 1
    return (run.model_copy(update={"warnings": [*run.warnings, *earlier]}) if earlier else run), attempt


def _stalled(run: BenchRun) -> bool:
    return bool(run.error and "did not finish" in run.error)


# What a stalled guest shows, compactly: requests the disk still holds (reads writes), each fio process's state
# and wait channel, and the kernel log's tail. A fixed script of kvmkit's own, run by the guest's busybox sh.
_STALL_PROBE = (
    'echo "vda inflight: $(cat /sys/block/vda/inflight)"; '
    'for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = fio ] && '
    'echo "fio ${d#/proc/}: state $(cut -d" " -f3 $d/stat) wchan $(cat $d/wchan 2>/dev/null)"; done; '
    "dmesg | tail -n 8"
)


def _guest_diagnostics(dom) -> str:
    """What a stalled guest shows (best effort, a few seconds at most)."""
    try:
        out = agent.guest_shell(dom, _STALL_PROBE, timeout_s=10)
    except Exception as exc:  # a stalled guest may not answer at all: say so instead
        return f"guest did not answer diagnostics: {exc}"
    return " | ".join(" ".join(line.split()) for line in out.splitlines() if line.strip())[:2000]


def _in_guest(state: LabState, uri: str, variant: Variant, backing: Path, opts: BenchOptions) -> BenchRun:
    name = scratch.vm_name(state)
    if variant.kind == "vhost-user-blk":
        scratch.start_storage_daemon(state, backing)
    try:
        with connection(uri) as conn:
            scratch.destroy_vm(conn, state)  # one left by a killed run
            dom = conn.createXML(_domain_xml(state, name, variant, backing, scratch.socket_path(state)), 0)
            try:
                lab.wait_for_agent(dom, None)

                def exec_fn(argv: list[str], timeout_s: float) -> agent.ExecResult:
                    return agent.guest_exec(dom, argv, timeout_s=timeout_s)

                runner = CommandRunner(f"vm:{name}", exec_fn)
                run = run_suite("quick", "/dev/vda", runner, BenchOptions(**{**opts.__dict__,
                                                                            "destructive": "/dev/vda"}))
                if _stalled(run):
                    seen = _guest_diagnostics(dom)
                    log.warning("%s: stalled guest: %s", variant.name, seen)
                    run = run.model_copy(update={"warnings": [*run.warnings, f"stalled guest: {seen}"]})
                return run
            finally:
                dom.destroy()  # transient: gone when destroyed
    finally:
        if variant.kind == "vhost-user-blk":
            scratch.stop_storage_daemon(state)


def _domain_xml(state: LabState, name: str, variant: Variant, backing: Path, sock: Path) -> str:
    image = guest.build(state.dir.parent / "guest-cache", with_fio=True)
    spec = domain.VmSpec(name=name, image=image, console_log=state.dir / "log" / f"{name}.console.log",
                         memory_mib=lab.FIO_GUEST_MIB)
    root = ET.fromstring(domain.domain_xml(spec))
    devices = root.find("devices")
    assert devices is not None
    if variant.kind == "vhost-user-blk":
        backing_el = ET.SubElement(root, "memoryBacking")
        ET.SubElement(backing_el, "source", type="memfd")
        ET.SubElement(backing_el, "access", mode="shared")
        disk = ET.Element("disk", type="vhostuser", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        ET.SubElement(disk, "source", type="unix", path=str(sock))
    else:
        disk = ET.Element("disk", type="file", device="disk")
        attrs = {"name": "qemu", "type": "raw", "cache": "none", "io": variant.io or "native"}
        if variant.iothread:
            attrs["iothread"] = "1"
            ET.SubElement(root, "iothreads").text = "1"
        ET.SubElement(disk, "driver", attrs)
        ET.SubElement(disk, "source", file=str(backing))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    devices.insert(0, disk)
    return ET.tostring(root, encoding="unicode")


def _job(run: BenchRun, name: str):
    return next((j for j in run.jobs if j.name == name and j.phase == "measure"), None)


def _iops(run: BenchRun, name: str) -> float:
    job = _job(run, name)
    return job.iops if job else 0.0


def _row(run: BenchRun, host: BenchRun | None, attempts: int = 1) -> PathRow:
    rr, rw, qd1, seq = (_job(run, n) for n in ("randread-4k-qd32", "randwrite-4k-qd32", "randread-4k-qd1",
                                                "read-1m-qd32"))
    host_rr = _iops(host, "randread-4k-qd32") if host else 0.0
    p99 = qd1.read.latency.p99 if qd1 and qd1.read and qd1.read.latency.p99 else None
    return PathRow(
        path=run.label or "?", status=run.status,
        randread_4k_qd32_iops=round(rr.iops) if rr else None, randwrite_4k_qd32_iops=round(rw.iops) if rw else None,
        randread_4k_qd1_p99_us=round(p99 / 1000, 1) if p99 else None,
        read_1m_qd32_mib_s=round(seq.bw_bytes / 2**20, 1) if seq else None,
        cpu_us_per_io_randread=round(rr.cpu_us_per_io, 1) if rr and rr.cpu_us_per_io else None,
        vs_host_randread=round(rr.iops / host_rr, 3) if rr and host_rr else None,
        attempts=attempts,
    )

