"""`kvmkit snapshot bench --group`: what snapshotting several VMs as one instant costs, against one VM alone.

Four lab VMs with two RBD disks each (a file disk would keep the crash-consistent half from being one storage-side
snapshot) are added to the configured lab, and in one run:

* quiesced: the group's freeze window — from the first guest's freeze call to the last guest's thaw return, i.e.
  the span during which any guest is frozen — against one VM's own freeze window (target ≤ 1.3×: the guests
  freeze in parallel, and their disks are snapshotted together);
* crash-consistent: one `rbd.Group` snapshot spanning the four VMs' eight images against one VM's own group
  snapshot of its two images (target ≤ 1.2×).

Rounds interleave group and anchor where they share nothing; the RBD anchors run before the group rounds,
because an image moves between its VM's RBD group and the consistency group's (an image is in one group only).
The mon's paxos interval is production's 1 s unless told otherwise, as in the other RBD benches.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from kvmkit import config
from kvmkit.benchmarks.snapshot_rbd import LAB_PAXOS_INTERVAL_S, _set_paxos_interval
from kvmkit.errors import EnvironmentProblem, InvalidInput
from kvmkit.lab import lab
from kvmkit.lab.state import load
from kvmkit.rss import peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.create import create
from kvmkit.snapshot.group import create_group
from kvmkit.snapshot.group_ops import delete_group
from kvmkit.snapshot.lifecycle import delete
from kvmkit.snapshot.model import Snapshot

Progress = Callable[[str], None]


class GroupBenchResult(BaseModel):
    vms: int
    disks_per_vm: int
    rounds: int
    paxos_propose_interval_s: float
    single_freeze_median_ms: float  # one VM alone, quiesced
    group_freeze_median_ms: float  # first freeze → last thaw across the group
    group_vs_single_freeze: float  # target ≤ 1.3
    single_rbd_group_median_ms: float  # one VM's crash-consistent rbd.Group snapshot (2 images)
    group_rbd_group_median_ms: float  # one rbd.Group snapshot across every VM's images
    group_vs_single_rbd_group: float  # target ≤ 1.2
    peak_rss_mib: float
    seconds: float


def group_window_ms(snaps: list[Snapshot]) -> float:
    """The span during which any member was frozen: first freeze call → last thaw return."""
    began = [s.freeze_began for s in snaps if s.freeze_began is not None]
    ended = [s.thaw_ended for s in snaps if s.thaw_ended is not None]
    if not began or not ended:
        raise EnvironmentProblem("a group snapshot without freeze times: nothing to measure")
    return (max(ended) - min(began)).total_seconds() * 1000


def run(lab_path: Path, uri: str, vms: int = 4, rounds: int = 3, paxos_interval_s: float = 1.0,
        progress: Progress = lambda _m: None) -> GroupBenchResult:
    if not 2 <= vms <= 8:
        raise InvalidInput("--vms must be 2-8")
    if not 1 <= rounds <= 50:
        raise InvalidInput("--rounds must be 1-50")
    t_start = time.perf_counter()
    state = load(lab_path)
    if state is None or state.ceph is None:
        raise EnvironmentProblem("the lab has no Ceph: run `kvmkit lab up --ceph` first")
    names = [f"{state.dir.name}-bench-grp{i}" for i in range(1, vms + 1)]
    for name in names:
        if state.vm(name) is not None:
            lab.remove_vm(state, name)
    catalog = Catalog(state.dir / "bench-group-catalog.sqlite")
    try:
        for name in names:
            lab.add_vm(state, name, file_disks=0, rbd_disks=2, size_mib=64, start=False)
        progress(f"starting {vms} VMs with 2 RBD disks each")
        lab.start_vms(state, names, progress)
        _set_paxos_interval(state, paxos_interval_s)
        base = SnapshotContext.from_settings(config.load(), uri)
        ctx = SnapshotContext(uri=uri, state_dir=state.dir / "bench-group-state", catalog=catalog,
                              drivers=base.make_drivers(), settings=base.settings)
        single, grouped = _quiesced(ctx, names, rounds, progress)
        one_rbd, all_rbd = _crash(ctx, names, rounds, progress)
    finally:
        catalog.close()
        _set_paxos_interval(state, LAB_PAXOS_INTERVAL_S)
        for name in names:
            if state.vm(name) is not None:
                lab.remove_vm(state, name)
    return GroupBenchResult(
        vms=vms, disks_per_vm=2, rounds=rounds, paxos_propose_interval_s=paxos_interval_s,
        single_freeze_median_ms=round(single, 1), group_freeze_median_ms=round(grouped, 1),
        group_vs_single_freeze=round(grouped / single, 2), single_rbd_group_median_ms=round(one_rbd, 1),
        group_rbd_group_median_ms=round(all_rbd, 1), group_vs_single_rbd_group=round(all_rbd / one_rbd, 2),
        peak_rss_mib=peak_rss_mib(), seconds=round(time.perf_counter() - t_start, 1))


def _quiesced(ctx: SnapshotContext, names: list[str], rounds: int, progress: Progress) -> tuple[float, float]:
    single: list[float] = []
    grouped: list[float] = []
    for round_ in range(rounds + 1):  # round 0 warms up (the first freeze flushes fresh journals)
        snap = create(ctx, names[0], f"one-{round_}")
        delete(ctx, names[0], snap.name)
        snaps = create_group(ctx, "bench", names, f"all-{round_}")
        delete_group(ctx, "bench", snaps[0].name)
        if round_:
            single.append(snap.freeze_ms or 0.0)
            grouped.append(group_window_ms(snaps))
            progress(f"quiesced round {round_}: one VM {single[-1]:.0f} ms, group of {len(names)} "
                     f"{grouped[-1]:.0f} ms")
    return statistics.median(single), statistics.median(grouped)


def _crash(ctx: SnapshotContext, names: list[str], rounds: int, progress: Progress) -> tuple[float, float]:
    one: list[float] = []
    every: list[float] = []
    for round_ in range(rounds + 1):
        snap = create(ctx, names[0], f"c1-{round_}", crash_consistent=True)
        delete(ctx, names[0], snap.name)
        if round_:
            one.append(snap.storage_ms or 0.0)
    for round_ in range(rounds + 1):
        snaps = create_group(ctx, "bench", names, f"call-{round_}", crash_consistent=True)
        delete_group(ctx, "bench", snaps[0].name)
        if round_:
            every.append(snaps[0].storage_ms or 0.0)
    progress(f"crash-consistent: one VM's rbd.Group {statistics.median(one):.0f} ms, "
             f"{len(names)} VMs' {statistics.median(every):.0f} ms")
    return statistics.median(one), statistics.median(every)
