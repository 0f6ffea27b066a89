"""`kvmkit snapshot bench --shape cloudstack`: the freeze window on a CloudStack-shaped VM, in one run, against
(1) a default-shaped VM with as many file and RBD disks, and (2) a CloudStack-style loop on the same VM.

The shaped VM has two qcow2 file disks (a root overlay on its template, a data disk) and two RBD disks reached as
CloudStack reaches them (monitors from `<host>`, a restricted cephx user, the key in a libvirt secret). The
default VM has two raw files and two RBD disks of the lab's own user. The loop takes the same VM's disk snapshots
one after another inside the freeze, as an orchestrator that walks its volumes does. Rounds interleave the three
so drift on a shared machine hits them alike. The bench brings up its own lab beside the configured one (a Ceph
with cephx) and takes it down after; the mon's paxos interval is set to production's 1 s unless told otherwise
(every RBD snapshot then costs what it costs on a real cluster, which is what concurrency saves).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from kvmkit.benchmarks.snapshot_rbd import LAB_PAXOS_INTERVAL_S, _set_paxos_interval
from kvmkit.errors import InvalidInput
from kvmkit.lab import lab
from kvmkit.lab.state import load
from kvmkit.rss import peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.engine import Engine

Progress = Callable[[str], None]


class ShapeBenchResult(BaseModel):
    shape: str
    disks: str  # what each VM carries
    rounds: int
    paxos_propose_interval_s: float
    default_freeze_median_ms: float
    shaped_freeze_median_ms: float
    loop_freeze_median_ms: float  # the same shaped VM, its disks snapshotted one after another in the freeze
    shaped_vs_default: float  # target ≤ 1.2
    shaped_vs_loop: float  # target ≤ 0.3
    peak_rss_mib: float
    seconds: float


def run(lab_path: Path, uri: str, rounds: int, shape: str = "cloudstack", paxos_interval_s: float = 1.0,
        progress: Progress = lambda _m: None) -> ShapeBenchResult:
    if shape != "cloudstack":
        raise InvalidInput("--shape: the bench compares the cloudstack shape (file + RBD disks)")
    if not 1 <= rounds <= 50:
        raise InvalidInput("--rounds must be 1-50")
    t_start = time.perf_counter()
    lab_dir = lab_path.with_name(lab_path.name + "-bench-shapes")
    lab.down(lab_dir)
    progress(f"lab {lab_dir}: Ceph with cephx, one CloudStack-shaped and one default VM")
    try:
        lab.up(lab_dir, uri, vms=0, shape="cloudstack")
        state = load(lab_dir)
        assert state is not None
        shaped, default = f"{lab_dir.name}-cs", f"{lab_dir.name}-df"
        lab.add_shaped_vm(state, shaped, "cloudstack", size_mib=64, start=False)
        lab.add_vm(state, default, file_disks=2, rbd_disks=2, size_mib=64, start=False)
        lab.start_vms(state, [shaped, default], progress)
        _set_paxos_interval(state, paxos_interval_s)
        catalog = Catalog(lab_dir / "bench-catalog.sqlite")
        engine = Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog)
        loop = Engine(uri=uri, state_dir=lab_dir / "bench-state", catalog=catalog, sequential=True)
        samples: dict[str, list[float]] = {"default": [], "shaped": [], "loop": []}
        for round_ in range(rounds + 1):  # round 0 warms up (first freeze flushes fresh journals)
            for key, vm, eng in (("default", default, engine), ("shaped", shaped, engine), ("loop", shaped, loop)):
                snap = eng.create(vm, f"{key}-{round_}")
                eng.delete(vm, snap.name)
                if round_:
                    samples[key].append(snap.freeze_ms or 0.0)
            if round_:
                progress(f"round {round_}: default {samples['default'][-1]:.0f} ms, shaped "
                         f"{samples['shaped'][-1]:.0f} ms, loop {samples['loop'][-1]:.0f} ms")
        catalog.close()
        _set_paxos_interval(state, LAB_PAXOS_INTERVAL_S)
    finally:
        lab.down(lab_dir)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return ShapeBenchResult(
        shape=shape, disks="2 file (qcow2 overlay on a template + qcow2 | 2 raw) + 2 RBD (cephx via libvirt secret)",
        rounds=rounds, paxos_propose_interval_s=paxos_interval_s,
        default_freeze_median_ms=round(med["default"], 1), shaped_freeze_median_ms=round(med["shaped"], 1),
        loop_freeze_median_ms=round(med["loop"], 1),
        shaped_vs_default=round(med["shaped"] / med["default"], 2),
        shaped_vs_loop=round(med["shaped"] / med["loop"], 2),
        peak_rss_mib=peak_rss_mib(), seconds=round(time.perf_counter() - t_start, 1))
