"""`kvmkit snapshot bench --storage storpool`: the StorPool driver's two claims, measured on a lab VM whose disks are
volumes of the FAKE StorPool API (kvmkit.benchmarks.storpool_fake — no StorPool cluster runs
here, so every figure is the driver + a fake server + real QEMU/agent/XFS, never StorPool's own latency). The fake
runs in its own process, as an API server would.

1. Group snapshot (`--crash-consistent` on an all-StorPool VM): one `VolumesGroupSnapshot` call for every disk, no
   freeze and no pause — counted from the fake's request log, not assumed.
2. Quiesced snapshot: the disks' `VolumeSnapshot` calls are issued concurrently inside the freeze, so the
   disk-snapshot phase should cost about one call. The anchor, measured in the same run on the same volume with
   the guest frozen the same way: one `VolumeSnapshot` call on its own. A sequential loop (the engine's
   benchmark-only `sequential` mode) is measured too, to show what concurrency buys. `--api-latency-ms` adds a
   fixed server-side delay per call (a management API round trip on a real network); the figures say which
   latency they ran with.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem, InvalidInput
from kvmkit.lab import lab
from kvmkit.lab.state import load, locked
from kvmkit.rss import peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.base import PlanOptions
from kvmkit.snapshot.drivers.file import FileDriver
from kvmkit.snapshot.drivers.storpool import (
    Endpoint,
    StorPoolDriver,
    spapi,  # imported there without the binding's stderr notice
)
from kvmkit.snapshot.engine import Engine
from kvmkit.snapshot.model import Mode
from kvmkit.virt.connection import connection, live_disks

Progress = Callable[[str], None]


class StorPoolBenchResult(BaseModel):
    api: str = "FAKE StorPool API (kvmkit.benchmarks.storpool_fake)"
    disks: int
    rounds: int
    api_latency_ms: float
    accel: str
    group_api_calls: int  # POST calls the fake saw during one group snapshot of every disk (target: 1)
    group_snapshot_calls: int  # of which VolumesGroupSnapshot
    group_freeze_ms: float  # the engine's freeze window in group mode (target: 0)
    group_guest_frozen: bool  # whether the guest agent ever reported "frozen" during the group snapshots
    group_median_ms: float  # the group call alone
    single_call_median_ms: float  # anchor: one VolumeSnapshot call
    quiesced_storage_median_ms: float  # the disks' concurrent VolumeSnapshot calls inside the freeze
    quiesced_freeze_median_ms: float  # the whole freeze window (agent freeze → thaw)
    sequential_storage_median_ms: float  # the same calls one after another (what a loop would cost)
    storage_vs_single: float  # target ≤ 1.2
    freeze_vs_single: float
    sequential_vs_single: float
    peak_rss_mib: float
    seconds: float


class FakeServer:
    """The fake API in its own process (as a real API would be: the client's threads must not share its GIL)."""

    def __init__(self, root: Path, latency_ms: float) -> None:
        self.ready = root.parent / f".{root.name}.ready"
        self.ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-I", "-m", "kvmkit.benchmarks.storpool_fake",
                                      "--root", str(root), "--ready", str(self.ready), "--latency-ms", str(latency_ms),
                                      "--cluster-id", "fake.bench"], cwd="/",
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not self.ready.exists() or not self.ready.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-300:] if self.proc.stderr else ""
                self.stop()
                raise EnvironmentProblem(f"the fake StorPool API did not start: {err.strip()}")
            time.sleep(0.05)
        info = json.loads(self.ready.read_text())
        self.endpoint = Endpoint(info["host"], int(info["port"]), info["token"], "bench fake")
        self.api = spapi.Api(host=self.endpoint.host, port=self.endpoint.port, auth=self.endpoint.token,
                             transientRetries=0, timeout=30)

    def calls(self) -> list[tuple[str, str]]:
        return [(m, e) for m, e in self.api("GET", False, "FakeCalls")]

    def make_volume(self, name: str, size_bytes: int) -> Path:
        """Through the API, as an operator would; then an ext4 on its device (the guest mounts it)."""
        self.api.volumeCreate({"name": name, "size": size_bytes})
        self.api.volumesReassign(json=[{"volume": name, "rw": [1]}])  # this host's client (the fake's default id)
        device = Path("/dev/storpool") / name
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                        str(device)], check=True, capture_output=True, timeout=120)
        return device

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the fake detaches its loop devices and removes its links and files
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ready.unlink(missing_ok=True)


def run(lab_dir: Path, uri: str, disks: int, rounds: int, api_latency_ms: float = 0.0,
        progress: Progress = lambda _m: None) -> StorPoolBenchResult:
    if rounds < 1 or not 1 <= disks <= 16:
        raise InvalidInput("--rounds must be ≥ 1 and the StorPool bench takes 1-16 disks")
    if not 0 <= api_latency_ms <= 1000:
        raise InvalidInput("--api-latency-ms must be 0-1000")
    state = load(lab_dir)
    if state is None or state.pool is None:
        raise EnvironmentProblem("the lab is not up: run `kvmkit lab up` first")
    t_start = time.perf_counter()
    fake = FakeServer(state.pool.path / "bench-fake-storpool", api_latency_ms)
    name = f"{state.dir.name}-bench-sp{disks}"
    catalog_path = lab_dir / "bench-sp-catalog.sqlite"
    catalog = Catalog(catalog_path)
    try:
        devices = tuple(fake.make_volume(f"{name}-v{i}", 64 << 20) for i in range(disks))
        with locked(lab_dir):
            state = load(lab_dir)
            assert state is not None
            if state.vm(name) is not None:
                lab.remove_vm(state, name)
            lab.add_vm(state, name, file_disks=0, rbd_disks=0, block_disks=devices)
        progress(f"VM {name}: {disks} StorPool disk(s) on the fake API (latency {api_latency_ms:g} ms)")
        driver = StorPoolDriver(fake.endpoint)  # the engine tags with its catalog's id and the VM's uuid
        engine = Engine(uri=uri, state_dir=lab_dir / "bench-sp-state", catalog=catalog,
                        drivers=[FileDriver(), driver])
        return _measure(fake, driver, engine, name, disks, rounds, api_latency_ms, state.accel, t_start, progress)
    finally:
        catalog.close()
        catalog_path.unlink(missing_ok=True)
        with locked(lab_dir):
            state = load(lab_dir)
            if state is not None and state.vm(name) is not None:
                lab.remove_vm(state, name)
        fake.stop()


def _measure(fake: FakeServer, driver: StorPoolDriver, engine: Engine, vm: str, disks: int, rounds: int,
             latency_ms: float, accel: str, t_start: float, progress: Progress) -> StorPoolBenchResult:
    from kvmkit.virt import agent

    single, storage, freeze, sequential, group_ms = [], [], [], [], []
    group_posts: list[str] = []
    group_freeze = 0.0
    frozen_seen = False
    with connection(engine.uri) as conn:
        dom = conn.lookupByName(vm)
        first = live_disks(dom)[0]
        for round_ in range(rounds + 1):  # round 0 warms up (first freeze flushes fresh ext4 journals)
            planned = driver.plan(first, f"one-{round_}", PlanOptions(owner=engine.catalog.catalog_id,
                                                                     vm_uuid=dom.UUIDString()))
            agent.freeze(dom)  # the anchor runs in the same conditions as the calls it is compared with
            try:
                t0 = time.perf_counter()
                made = driver.snapshot(planned)
                one = (time.perf_counter() - t0) * 1000
            finally:
                agent.thaw(dom)
            driver.delete(made)
            snap = engine.create(vm, f"q-{round_}")
            engine.delete(vm, snap.name)
            engine.sequential = True
            seq = engine.create(vm, f"s-{round_}")
            engine.sequential = False
            engine.delete(vm, seq.name)
            before = len(fake.calls())
            with _FreezeSampler(dom) as sampler:
                grp = engine.create(vm, f"g-{round_}", crash_consistent=True)
            posts = [e for m, e in fake.calls()[before:] if m == "POST"]
            frozen_seen = frozen_seen or sampler.frozen
            engine.delete(vm, grp.name)
            if grp.mode is not Mode.GROUP:
                raise EnvironmentProblem(f"the group snapshot ran in mode {grp.mode.value}, not group")
            if round_ == 0:
                continue
            single.append(one)
            storage.append(snap.storage_ms or 0.0)
            freeze.append(snap.freeze_ms or 0.0)
            sequential.append(seq.storage_ms or 0.0)
            group_ms.append(grp.storage_ms or 0.0)
            group_posts = posts
            group_freeze = max(group_freeze, grp.freeze_ms or 0.0)
            progress(f"round {round_}: one call {one:.1f} ms, {disks} concurrent {snap.storage_ms} ms, "
                     f"sequential {seq.storage_ms} ms, freeze {snap.freeze_ms} ms, group {grp.storage_ms} ms "
                     f"({len(posts)} API call)")
    med = statistics.median
    one_ms = med(single)
    return StorPoolBenchResult(
        disks=disks, rounds=rounds, api_latency_ms=latency_ms, accel=accel,
        group_api_calls=len(group_posts), group_snapshot_calls=group_posts.count("VolumesGroupSnapshot"),
        group_freeze_ms=group_freeze, group_guest_frozen=frozen_seen, group_median_ms=round(med(group_ms), 2),
        single_call_median_ms=round(one_ms, 2), quiesced_storage_median_ms=round(med(storage), 2),
        quiesced_freeze_median_ms=round(med(freeze), 2), sequential_storage_median_ms=round(med(sequential), 2),
        storage_vs_single=round(med(storage) / one_ms, 2), freeze_vs_single=round(med(freeze) / one_ms, 2),
        sequential_vs_single=round(med(sequential) / one_ms, 2), peak_rss_mib=peak_rss_mib(),
        seconds=round(time.perf_counter() - t_start, 1))


class _FreezeSampler:
    """Asks the guest agent for its freeze state as fast as it answers while the group snapshot runs."""

    def __init__(self, dom) -> None:
        self.dom = dom
        self.frozen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        from kvmkit.virt import agent

        while not self._stop.is_set():
            if agent.freeze_status(self.dom) == "frozen":
                self.frozen = True

    def __enter__(self) -> _FreezeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
