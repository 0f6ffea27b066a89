"""`kvmkit snapshot bench --fragment`: the freeze window on a fragmented file disk, in one run.

On one lab VM with one data disk: kvmkit's window on the fresh (few-extent) disk, then the disk is fragmented in
place (zero blocks written into its holes every other block: content unchanged, ~N extents), and measured again,
in interleaved rounds so that drift on a shared machine hits every variant alike: a reflink alone of the same file
(the VM running, idle), kvmkit with the overlay barrier through QMP (the default past `extent_limit`) and through
libvirt — each with its window, its time until durable with no overlay left, and its commit. Then kvmkit forced to
reflink inside the freeze (what a naive tool does) and libvirt's own quiesced disk-only snapshot (+ block commit to
undo it). Medians of `rounds`. Between steps the pool is synced: XFS frees a deleted clone's extents in the
background, and that work would otherwise land on whichever step comes next.
"""

from __future__ import annotations

import os
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
    rounds: int
    unfragmented_freeze_ms: float
    reflink_alone_ms: float  # one FICLONE of the fragmented file, nothing else (the VM running, idle)
    barrier_freeze_ms: float  # kvmkit default: QMP overlay barrier inside the freeze
    barrier_total_ms: float  # … and until the snapshot is durable and no overlay is left (create call to return)
    barrier_after_thaw_ms: float  # clone of the quiet base + block commit back
    barrier_commit_ms: float  # the block commit back alone
    libvirt_barrier_freeze_ms: float  # overlay_barrier = "libvirt": libvirt's disk-only external snapshot inside
    libvirt_barrier_total_ms: float
    forced_reflink_freeze_ms: float  # kvmkit made to reflink inside the freeze
    libvirt_ms: float  # libvirt's quiesced disk-only snapshot on the same fragmented disk
    barrier_vs_unfragmented: float  # target ≤ 1.2
    libvirt_barrier_vs_unfragmented: float
    total_vs_reflink_plus_commit: float  # target ≤ 1 (plus what planning and the window cost)
    peak_rss_mib: float
    seconds: float


def run(lab_dir: Path, uri: str, extents: int, progress: Progress = lambda _m: None,
        disk_gib: int = 2, rounds: int = 3) -> FragmentResult:
    state = load(lab_dir)
    if state is None or state.pool is None or state.pool.kind != "xfs":
        raise EnvironmentProblem("the lab with an XFS reflink pool is not up: run `kvmkit lab up` first")
    t_start = time.perf_counter()
    name = f"{lab_dir.name}-bench-frag"
    if state.vm(name) is not None:
        lab.remove_vm(state, name)
    lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=disk_gib << 10)
    catalog = Catalog(lab_dir / "bench-frag-catalog.sqlite")

    def engine(**kw) -> Engine:
        return Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog, **kw)

    default, via_libvirt, forced = engine(), engine(overlay_barrier="libvirt"), engine(extent_limit=NEVER)
    try:
        path = Path(state.vm(name).disks[0].source)
        before = extent_count(path)
        _snap_and_drop(default, name, "warm")
        fresh = _median([_snap_and_drop(default, name, f"fresh{i}") for i in range(rounds)])
        progress(f"unfragmented ({before} extents): freeze {fresh['freeze']:.1f} ms")
        with connection(uri) as conn:
            conn.lookupByName(name).destroy()
        t0 = time.perf_counter()
        disks.fragment(path, extents)
        after = extent_count(path)
        progress(f"fragmented to {after} extents in {time.perf_counter() - t0:.0f} s")
        lab.start_vms(state, [name])
        alone, qmp, lv_barrier = [], [], []
        for i in range(rounds):
            alone.append(_reflink_alone_ms(path))
            qmp.append(_snap_and_drop(default, name, f"qmp{i}"))
            lv_barrier.append(_snap_and_drop(via_libvirt, name, f"libvirt{i}"))
            progress(f"round {i + 1}: reflink alone {alone[-1]:.0f} ms; QMP barrier freeze {qmp[-1]['freeze']:.1f} "
                     f"ms, durable after {qmp[-1]['total']:.0f} ms (commit {qmp[-1]['commit']:.0f} ms); libvirt "
                     f"barrier freeze {lv_barrier[-1]['freeze']:.1f} ms")
        reflink_ms, barrier, lv = statistics.median(alone), _median(qmp), _median(lv_barrier)
        naive = _snap_and_drop(forced, name, "naive")
        progress(f"reflink inside the freeze: freeze {naive['freeze']:.0f} ms")
        with connection(uri) as conn:
            lv_own = libvirt_snapshot_ms(conn, conn.lookupByName(name), "lvfrag")
        progress(f"libvirt quiesced disk-only: {lv_own:.0f} ms")
    finally:
        catalog.close()
        (lab_dir / "bench-frag-catalog.sqlite").unlink(missing_ok=True)
        lab.remove_vm(state, name)
    return FragmentResult(
        disk_gib=disk_gib, extents_before=before, extents_after=after, rounds=rounds,
        unfragmented_freeze_ms=fresh["freeze"], reflink_alone_ms=round(reflink_ms, 1),
        barrier_freeze_ms=barrier["freeze"], barrier_total_ms=barrier["total"], barrier_after_thaw_ms=barrier["after"],
        barrier_commit_ms=barrier["commit"], libvirt_barrier_freeze_ms=lv["freeze"],
        libvirt_barrier_total_ms=lv["total"], forced_reflink_freeze_ms=naive["freeze"], libvirt_ms=round(lv_own, 1),
        barrier_vs_unfragmented=round(barrier["freeze"] / fresh["freeze"], 2),
        libvirt_barrier_vs_unfragmented=round(lv["freeze"] / fresh["freeze"], 2),
        total_vs_reflink_plus_commit=round(barrier["total"] / (reflink_ms + barrier["commit"]), 2),
        peak_rss_mib=peak_rss_mib(), seconds=round(time.perf_counter() - t_start, 1))


def _reflink_alone_ms(path: Path) -> float:
    probe = path.with_name(path.name + ".probe")
    t0 = time.perf_counter()
    reflink(path, probe)
    elapsed = (time.perf_counter() - t0) * 1000
    probe.unlink()
    _settle(path)
    return elapsed


def _settle(path: Path) -> None:
    """syncfs of the pool: deleted clones' extents are freed now, not during the next measured step."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
        os.sync()
    finally:
        os.close(fd)


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in samples[0]}


def _snap_and_drop(engine: Engine, vm: str, tag: str) -> dict[str, float]:
    """One snapshot, deleted again (and its freed extents settled); its figures."""
    snap = engine.create(vm, f"bench-{tag}")
    engine.delete(vm, snap.name)
    source = Path(snap.disks[0].source)
    if source.exists():
        _settle(source)
    return {"freeze": snap.freeze_ms or 0.0, "total": snap.total_ms or 0.0, "after": snap.after_thaw_ms or 0.0,
            "commit": snap.commit_ms or 0.0}
