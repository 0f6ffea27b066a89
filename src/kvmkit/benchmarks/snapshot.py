"""`kvmkit snapshot bench`: kvmkit's freeze window against libvirt's own quiesced disk-only snapshot, same VM, same run.

Per disk count the bench makes a lab VM with that many file disks, then alternates rounds: a kvmkit snapshot
(freeze → parallel reflinks → thaw, timed by the engine) and libvirt's `snapshotCreateXML(disk-only, quiesce,
atomic, no-metadata)` timed around the call (its freeze, overlay creation and thaw all happen inside it), which
is then undone by an active block commit + pivot. One warm-up round of each is discarded (the first freeze
flushes a fresh ext4 journal). Only ratios from one run mean anything on a shared, noisy machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt
from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem, InvalidInput
from kvmkit.lab import lab
from kvmkit.lab.state import LabState, load
from kvmkit.rss import peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.engine import Engine
from kvmkit.virt.blockjob import commit_active
from kvmkit.virt.connection import connection, live_disks

Progress = Callable[[str], None]
LIBVIRT_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)


class BenchRow(BaseModel):
    disks: int
    rounds: int
    kvmkit_median_ms: float
    kvmkit_max_ms: float
    kvmkit_storage_median_ms: float  # the concurrent disk snapshots inside kvmkit's window
    libvirt_median_ms: float
    libvirt_max_ms: float
    ratio_vs_libvirt: float  # kvmkit median / libvirt median: < 1 means a shorter freeze than libvirt's


class BenchResult(BaseModel):
    storage: str = "file"
    filesystems: str  # "every": each disk carries a mounted ext4 the agent must freeze; "first": only vda does
    accel: str
    results: list[BenchRow]
    scaling_max_vs_1_disk: float | None  # kvmkit window median at the most disks / at 1 disk
    storage_scaling_max_vs_1_disk: float | None  # the same for the disk-snapshot phase: ~1 when truly concurrent
    peak_rss_mib: float
    seconds: float


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput(f"--disks takes a comma-separated list of disk counts, not {text!r}") from None
    if not counts or any(not 1 <= c <= 26 for c in counts):
        raise InvalidInput("--disks: each disk count must be 1-26")
    return counts


def libvirt_snapshot_ms(conn: libvirt.virConnect, dom: libvirt.virDomain, tag: str) -> float:
    """libvirt's quiesced atomic disk-only snapshot, timed around the call; then undone (commit + pivot)."""
    disks = live_disks(dom)
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = tag
    disks_el = ET.SubElement(root, "disks")
    overlays = []
    for disk in disks:
        overlay = Path(f"{disk.source}.{tag}.overlay")
        overlays.append(overlay)
        el = ET.SubElement(disks_el, "disk", name=disk.target, snapshot="external")
        ET.SubElement(el, "driver", type="qcow2")
        ET.SubElement(el, "source", file=str(overlay))
    t0 = time.perf_counter()
    dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), LIBVIRT_FLAGS)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    commit_active(conn, dom, [d.target for d in disks])
    for overlay in overlays:
        overlay.unlink(missing_ok=True)
    return elapsed_ms


def run(lab_dir: Path, uri: str, disk_counts: list[int], rounds: int, progress: Progress = lambda _m: None,
        disk_size_mib: int = 64, filesystems: str = "every") -> BenchResult:
    if rounds < 1:
        raise InvalidInput("--rounds must be at least 1")
    state = load(lab_dir)
    if state is None:
        raise EnvironmentProblem("the lab is not up: run `kvmkit lab up` first")
    t_start = time.perf_counter()
    catalog = Catalog(lab_dir / "bench-catalog.sqlite")
    engine = Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog)
    rows = []
    for count in disk_counts:
        rows.append(_bench_count(state, engine, count, rounds, disk_size_mib, filesystems, progress))
    catalog.close()
    (lab_dir / "bench-catalog.sqlite").unlink(missing_ok=True)
    by_count = {r.disks: r for r in rows}
    scaling = storage_scaling = None
    if 1 in by_count and max(by_count) > 1:
        most, one = by_count[max(by_count)], by_count[1]
        scaling = round(most.kvmkit_median_ms / one.kvmkit_median_ms, 2)
        storage_scaling = round(most.kvmkit_storage_median_ms / max(one.kvmkit_storage_median_ms, 0.01), 2)
    return BenchResult(filesystems=filesystems, accel=state.accel, results=rows, scaling_max_vs_1_disk=scaling,
                       storage_scaling_max_vs_1_disk=storage_scaling, peak_rss_mib=peak_rss_mib(),
                       seconds=round(time.perf_counter() - t_start, 1))


def _bench_count(state: LabState, engine: Engine, count: int, rounds: int, size_mib: int, filesystems: str,
                 progress: Progress) -> BenchRow:
    name = f"{state.dir.name}-bench-d{count}"
    if state.vm(name) is not None:
        lab.remove_vm(state, name)
    lab.add_vm(state, name, file_disks=count, rbd_disks=0, size_mib=size_mib,
               filesystems=filesystems)  # type: ignore[arg-type]
    kvmkit_ms: list[float] = []
    storage_ms: list[float] = []
    libvirt_ms: list[float] = []
    try:
        with connection(state.uri) as conn:
            dom = conn.lookupByName(name)
            for round_ in range(rounds + 1):  # round 0 is the warm-up
                snap = engine.create(name, f"bench-{round_}")
                engine.delete(name, snap.name)
                lv = libvirt_snapshot_ms(conn, dom, f"lv{round_}")
                if round_ > 0:
                    assert snap.freeze_ms is not None
                    kvmkit_ms.append(snap.freeze_ms)
                    storage_ms.append(snap.storage_ms or 0.0)
                    libvirt_ms.append(lv)
            progress(f"{count:>2} disk(s): kvmkit {statistics.median(kvmkit_ms):7.1f} ms, "
                     f"libvirt {statistics.median(libvirt_ms):7.1f} ms")
    finally:
        lab.remove_vm(state, name)
    k_med, l_med = statistics.median(kvmkit_ms), statistics.median(libvirt_ms)
    return BenchRow(disks=count, rounds=rounds, kvmkit_median_ms=round(k_med, 1),
                    kvmkit_max_ms=round(max(kvmkit_ms), 1),
                    kvmkit_storage_median_ms=round(statistics.median(storage_ms), 2),
                    libvirt_median_ms=round(l_med, 1), libvirt_max_ms=round(max(libvirt_ms), 1),
                    ratio_vs_libvirt=round(k_med / l_med, 2))
