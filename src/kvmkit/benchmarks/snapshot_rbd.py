"""`kvmkit snapshot bench --storage rbd`: what concurrency, groups and clones buy on Ceph, measured in one run.

* quiesced freeze window with every `create_snap` issued concurrently vs the same engine looping over the disks;
* group snapshot (`rbd.Group.create_snap`): freeze 0, its wall time;
* revert of a 1 GiB and an 8 GiB image: by clone (O(1)) vs `rollback_to_snap` (O(size)), through the driver.
The lab's Ceph runs `paxos propose interval = 0.01` (create_snap ~0.05 s); real clusters keep 1 s, where one
create_snap costs ~0.4-0.7 s. The bench sets the interval it is given (default 1 s, like production) on the mon
for its duration with `injectargs`, and puts the lab's value back afterwards.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import rados
import rbd
from pydantic import BaseModel

from kvmkit.benchmarks.snapshot import parse_counts
from kvmkit.config import CephSettings
from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import lab
from kvmkit.lab.state import LabState, load
from kvmkit.rss import peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.base import RevertOptions
from kvmkit.snapshot.drivers.rbd import RbdDriver
from kvmkit.snapshot.engine import Engine
from kvmkit.snapshot.journal import RbdCloneStaging
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk

Progress = Callable[[str], None]


class RbdRow(BaseModel):
    disks: int
    rounds: int
    one_create_snap_ms: float  # a single create_snap on an open image, measured in this run
    concurrent_freeze_median_ms: float
    concurrent_storage_median_ms: float
    sequential_freeze_median_ms: float
    sequential_storage_median_ms: float
    group_wall_median_ms: float  # crash-consistent group snapshot: no freeze at all
    storage_vs_one_create_snap: float  # concurrent storage phase / one create_snap: ~1 when truly parallel


class RevertRow(BaseModel):
    size_gib: int
    clone_ms: float
    rollback_ms: float
    rollback_vs_clone: float


class RbdBenchResult(BaseModel):
    storage: str = "rbd"
    paxos_propose_interval_s: float
    results: list[RbdRow]
    revert: list[RevertRow]
    peak_rss_mib: float
    seconds: float


def run(lab_dir: Path, uri: str, disk_counts: list[int], rounds: int, revert_sizes_gib: list[int],
        progress: Progress = lambda _m: None, paxos_interval_s: float = 1.0) -> RbdBenchResult:
    state = load(lab_dir)
    if state is None or state.ceph is None:
        raise EnvironmentProblem("the lab has no Ceph: run `kvmkit lab up --ceph` first")
    t_start = time.perf_counter()
    catalog = Catalog(lab_dir / "bench-rbd-catalog.sqlite")
    _set_paxos_interval(state, paxos_interval_s)
    try:
        rows = [_bench_count(state, uri, catalog, count, rounds, progress) for count in disk_counts]
        reverts = [_bench_revert(state, size, progress) for size in revert_sizes_gib]
    finally:
        _set_paxos_interval(state, LAB_PAXOS_INTERVAL_S)
        catalog.close()
        (lab_dir / "bench-rbd-catalog.sqlite").unlink(missing_ok=True)
    return RbdBenchResult(paxos_propose_interval_s=paxos_interval_s, results=rows, revert=reverts,
                          peak_rss_mib=peak_rss_mib(), seconds=round(time.perf_counter() - t_start, 1))


LAB_PAXOS_INTERVAL_S = 0.01


def _set_paxos_interval(state: LabState, seconds: float, attempts: int = 50) -> None:
    """Inject the interval into mon.a. A command targeted at one mon needs the client's monmap, which a fresh
    connection may not have yet (auth none): librados then answers "mon dne" at once. That one answer is retried
    (bounded), as the lab retries "wrong fsid" for its own mon commands."""
    cluster = _cluster(state)
    try:
        args = json.dumps({"prefix": "injectargs", "injected_args": [f"--paxos_propose_interval={seconds}"]})
        for _attempt in range(attempts):
            ret, _, err = cluster.mon_command(args, b"", timeout=10, target="a")
            if ret == 0:
                return
            if "mon dne" not in err:
                break
            time.sleep(0.05)
        raise EnvironmentProblem(f"cannot set paxos_propose_interval on the lab mon: {err}")
    finally:
        cluster.shutdown()


def _bench_count(state: LabState, uri: str, catalog: Catalog, count: int, rounds: int,
                 progress: Progress) -> RbdRow:
    name = f"{state.dir.name}-bench-rbd{count}"
    if state.vm(name) is not None:
        lab.remove_vm(state, name)
    lab.add_vm(state, name, file_disks=0, rbd_disks=count, size_mib=64, filesystems="first")
    concurrent = Engine(uri=uri, state_dir=state.dir / "bench-state", catalog=catalog)
    sequential = Engine(uri=uri, state_dir=state.dir / "bench-state", catalog=catalog, sequential=True)
    samples: dict[str, list[float]] = {k: [] for k in ("cw", "cs", "sw", "ss", "g")}
    one = _one_create_snap_ms(state)
    try:
        for round_ in range(rounds + 1):  # round 0 warms up
            for key, engine in (("c", concurrent), ("s", sequential)):
                snap = engine.create(name, f"{key}{round_}")
                engine.delete(name, snap.name)
                if round_:
                    samples[f"{key}w"].append(snap.freeze_ms or 0.0)
                    samples[f"{key}s"].append(snap.storage_ms or 0.0)
            t0 = time.perf_counter()
            snap = concurrent.create(name, f"g{round_}", crash_consistent=True)
            group_ms = (time.perf_counter() - t0) * 1000
            concurrent.delete(name, snap.name)
            if round_:
                samples["g"].append(group_ms)
    finally:
        lab.remove_vm(state, name)
    med = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    progress(f"{count} RBD disk(s): freeze concurrent {med['cw']} ms vs sequential {med['sw']} ms; "
             f"group {med['g']} ms wall, no freeze")
    return RbdRow(disks=count, rounds=rounds, one_create_snap_ms=round(one, 1), concurrent_freeze_median_ms=med["cw"],
                  concurrent_storage_median_ms=med["cs"], sequential_freeze_median_ms=med["sw"],
                  sequential_storage_median_ms=med["ss"], group_wall_median_ms=med["g"],
                  storage_vs_one_create_snap=round(med["cs"] / one, 2))


def _cluster(state: LabState) -> rados.Rados:
    assert state.ceph is not None
    cluster = rados.Rados(conffile=str(state.ceph.conf))
    cluster.connect(timeout=10)
    return cluster


def _one_create_snap_ms(state: LabState, tries: int = 5) -> float:
    cluster = _cluster(state)
    try:
        with cluster.open_ioctx("rbd") as ioctx:
            rbd.RBD().create(ioctx, "kvmkit-bench-probe", 64 << 20)
            times = []
            with rbd.Image(ioctx, "kvmkit-bench-probe") as img:
                for i in range(tries):
                    t0 = time.perf_counter()
                    img.create_snap(f"p{i}")
                    times.append((time.perf_counter() - t0) * 1000)
                    img.remove_snap(f"p{i}")
            rbd.RBD().remove(ioctx, "kvmkit-bench-probe")
    finally:
        cluster.shutdown()
    return statistics.median(times)


def _bench_revert(state: LabState, size_gib: int, progress: Progress) -> RevertRow:
    """Both paths through the driver on an image with a little data every 64 MiB (memstore keeps data in RAM)."""
    assert state.ceph is not None
    image = f"kvmkit-bench-revert-{size_gib}g"
    disk = Disk(target="vdz", kind="network", format="raw", source=f"rbd/{image}", protocol="rbd",
                hosts=(("127.0.0.1", state.ceph.port),), config_file=str(state.ceph.conf))
    cluster = _cluster(state)
    driver = RbdDriver(CephSettings(conf=state.ceph.conf))
    timings = {}
    try:
        with cluster.open_ioctx("rbd") as ioctx:
            rbd.RBD().create(ioctx, image, size_gib << 30)
            with rbd.Image(ioctx, image) as img:
                for off in range(0, size_gib << 30, 64 << 20):
                    img.write(b"k" * 65536, off)
            for method in ("clone", "rollback"):
                planned = driver.plan(disk, f"rev-{method}")
                driver.snapshot(planned)
                driver.release()
                with rbd.Image(ioctx, image) as img:
                    img.write(b"x" * 65536, 0)
                t0 = time.perf_counter()
                staged = driver.stage_revert(disk, planned, RevertOptions(rollback=method == "rollback"))
                driver.swap(staged)
                driver.commit(staged)
                timings[method] = (time.perf_counter() - t0) * 1000
                with rbd.Image(ioctx, image, read_only=True) as img:
                    assert img.read(0, 4) == b"kkkk", "revert did not restore the data"
                if method == "clone":
                    driver.flatten(disk)  # detach from the base so the next round starts from one image
                    assert isinstance(staged.data, RbdCloneStaging)
                    _purge(ioctx, staged.data.base)
            _purge(ioctx, image)
    finally:
        driver.release()
        cluster.shutdown()
    progress(f"revert {size_gib} GiB: clone {timings['clone']:.0f} ms, rollback {timings['rollback']:.0f} ms")
    return RevertRow(size_gib=size_gib, clone_ms=round(timings["clone"], 1), rollback_ms=round(timings["rollback"], 1),
                     rollback_vs_clone=round(timings["rollback"] / timings["clone"], 1))


def _purge(ioctx: rados.Ioctx, image: str) -> None:
    with rbd.Image(ioctx, image) as img:
        for snap in list(img.list_snaps()):
            img.remove_snap(snap["name"])
    rbd.RBD().remove(ioctx, image)


__all__ = ["DiskSnapshot", "parse_counts", "run"]
