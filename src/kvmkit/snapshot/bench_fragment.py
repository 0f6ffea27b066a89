"""`kvmkit snapshot bench --fragment`: the freeze window on a fragmented file disk, in one run.

On one lab VM with one data disk: kvmkit's window on the fresh (few-extent) disk, then the disk is fragmented in
place (zero blocks written into its holes every other block: content unchanged, ~N extents), and measured again:
the time a reflink alone takes; kvmkit's window and total with the overlay barrier (the default past
`extent_limit`), through libvirt and through QMP; kvmkit forced to reflink inside the freeze (what a naive tool
does); and libvirt's own quiesced disk-only snapshot (+ block commit to undo it). Windows are medians of 3.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import disks, lab
from kvmkit.lab.state import load
from kvmkit.snapshot.bench import libvirt_snapshot_ms, peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.file import reflink
from kvmkit.snapshot.engine import Engine
from kvmkit.snapshot.overlay import extent_count
from kvmkit.virt.connection import connection

Progress = Callable[[str], None]
NEVER = 1 << 62


class FragmentResult(BaseModel):
    disk_gib: int
    extents_before: int
    extents_after: int
    unfragmented_freeze_ms: float
    reflink_alone_ms: float  # one FICLONE of the fragmented file, nothing else
    barrier_freeze_ms: float  # kvmkit default: overlay barrier inside the freeze
    barrier_total_ms: float  # … and until the snapshot is durable and no overlay is left
    barrier_after_thaw_ms: float  # clone of the quiet base + block commit back
    qmp_barrier_freeze_ms: float  # overlay_barrier = "qmp": overlay node pre-opened, one QMP transaction inside
    qmp_barrier_total_ms: float
    forced_reflink_freeze_ms: float  # kvmkit made to reflink inside the freeze
    libvirt_ms: float  # libvirt's quiesced disk-only snapshot on the same fragmented disk
    barrier_vs_unfragmented: float  # target ≤ 1.2
    qmp_barrier_vs_unfragmented: float
    total_vs_reflink_alone: float
    peak_rss_mib: float
    seconds: float


def run(lab_dir: Path, uri: str, extents: int, progress: Progress = lambda _m: None,
        disk_gib: int = 2) -> FragmentResult:
    state = load(lab_dir)
    if state is None or state.pool is None or state.pool.kind != "xfs":
        raise EnvironmentProblem("the lab with an XFS reflink pool is not up: run `kvmkit lab up` first")
    t_start = time.perf_counter()
    name = f"{lab_dir.name}-bench-frag"
    if state.vm(name) is not None:
        lab.remove_vm(state, name)
    lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=disk_gib << 10)
    catalog = Catalog(lab_dir / "bench-frag-catalog.sqlite")
    engine = Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog)
    forced = Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog, extent_limit=NEVER)
    via_qmp = Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog, overlay_barrier="qmp")
    try:
        path = Path(state.vm(name).disks[0].source)
        before = extent_count(path)
        _snap_and_drop(engine, name, "warm", rounds=1)
        fresh = _snap_and_drop(engine, name, "fresh")
        progress(f"unfragmented ({before} extents): freeze {fresh['freeze']:.1f} ms")
        with connection(uri) as conn:
            conn.lookupByName(name).destroy()
        t0 = time.perf_counter()
        disks.fragment(path, extents)
        after = extent_count(path)
        progress(f"fragmented to {after} extents in {time.perf_counter() - t0:.0f} s")
        probe = path.with_name(path.name + ".probe")
        t0 = time.perf_counter()
        reflink(path, probe)
        reflink_ms = (time.perf_counter() - t0) * 1000
        probe.unlink()
        lab.start_vms(state, [name])
        barrier = _snap_and_drop(engine, name, "barrier")
        progress(f"barrier: freeze {barrier['freeze']:.1f} ms, durable after {barrier['total']:.0f} ms "
                 f"(reflink alone {reflink_ms:.0f} ms)")
        qmp = _snap_and_drop(via_qmp, name, "qmp")
        progress(f"QMP barrier: freeze {qmp['freeze']:.1f} ms, durable after {qmp['total']:.0f} ms")
        naive = _snap_and_drop(forced, name, "naive", rounds=1)
        progress(f"reflink inside the freeze: freeze {naive['freeze']:.0f} ms")
        with connection(uri) as conn:
            lv = libvirt_snapshot_ms(conn, conn.lookupByName(name), "lvfrag")
        progress(f"libvirt quiesced disk-only: {lv:.0f} ms")
    finally:
        catalog.close()
        (lab_dir / "bench-frag-catalog.sqlite").unlink(missing_ok=True)
        lab.remove_vm(state, name)
    return FragmentResult(
        disk_gib=disk_gib, extents_before=before, extents_after=after,
        unfragmented_freeze_ms=fresh["freeze"], reflink_alone_ms=round(reflink_ms, 1),
        barrier_freeze_ms=barrier["freeze"], barrier_total_ms=barrier["total"], barrier_after_thaw_ms=barrier["after"],
        qmp_barrier_freeze_ms=qmp["freeze"], qmp_barrier_total_ms=qmp["total"],
        forced_reflink_freeze_ms=naive["freeze"], libvirt_ms=round(lv, 1),
        barrier_vs_unfragmented=round(barrier["freeze"] / fresh["freeze"], 2),
        qmp_barrier_vs_unfragmented=round(qmp["freeze"] / fresh["freeze"], 2),
        total_vs_reflink_alone=round(barrier["total"] / reflink_ms, 2),
        peak_rss_mib=peak_rss_mib(), seconds=round(time.perf_counter() - t_start, 1))


def _snap_and_drop(engine: Engine, vm: str, tag: str, rounds: int = 3) -> dict[str, float]:
    """Medians over `rounds` snapshots (each deleted again): single windows on a shared machine are noise."""
    samples: dict[str, list[float]] = {"freeze": [], "total": [], "after": []}
    for i in range(rounds):
        snap = engine.create(vm, f"bench-{tag}-{i}")
        engine.delete(vm, snap.name)
        samples["freeze"].append(snap.freeze_ms or 0.0)
        samples["total"].append(snap.total_ms or 0.0)
        samples["after"].append(snap.after_thaw_ms or 0.0)
    return {k: round(statistics.median(v), 1) for k, v in samples.items()}
