"""The StorPool driver on real lab VMs whose disks are volumes of the FAKE StorPool API (tests/fakes/storpool_api.py):
each volume a loop device on the lab's XFS reflink pool behind /dev/storpool/<name>, attached as <disk type='block'>.
The freeze, the guest agent, QEMU, the reflinks and the guest's data are real; the StorPool cluster is not."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from storpool import spapi

from kvmkit.errors import OperationFailed
from kvmkit.snapshot.drivers.base import RevertOptions
from kvmkit.snapshot.drivers.registry import by_name
from kvmkit.snapshot.drivers.storpool import TAG_OWNER, TAG_SNAP, TAG_VM, TAG_VOLUME
from kvmkit.snapshot.model import Mode
from kvmkit.virt import agent
from kvmkit.virt.connection import live_disks
from tests.conftest import TEST_LAB_DIR, lab_vm
from tests.fakes.storpool_api import FakeStorPoolApi
from tests.snapshot.conftest import kvmkit, wait_thawed

pytestmark = pytest.mark.lab
LAB = TEST_LAB_DIR.name
SP4 = f"{LAB}-sp4"  # 4 StorPool disks
SPMIX = f"{LAB}-spmix"  # file + RBD + StorPool
TARGETS = ["vda", "vdb", "vdc", "vdd"]


@pytest.fixture(scope="module")
def fake(lab_state, snap_env, tmp_path_factory):
    """The fake API for this module, its storpool.conf in kvmkit's environment; VMs on it go before it does."""
    from kvmkit.lab.state import load

    pool = load(lab_state.dir).pool
    api = FakeStorPoolApi(pool.path / "fake-storpool", cluster_id="fake.t18").start()
    conf = api.write_conf(tmp_path_factory.mktemp("storpool") / "storpool.conf")
    os.environ["KVMKIT_STORPOOL_CONF"] = str(conf)
    made: list[str] = []
    yield api, conf, made
    from kvmkit.lab import lab
    from kvmkit.lab.state import locked

    with locked(lab_state.dir):
        state = load(lab_state.dir)
        for name in made:
            lab.remove_vm(state, name)
    os.environ.pop("KVMKIT_STORPOOL_CONF", None)
    api.stop()


@pytest.fixture(scope="module")
def sp_env(snap_env, fake) -> dict[str, str]:
    return {**snap_env, "KVMKIT_STORPOOL_CONF": str(fake[1])}


def _vm_on_volumes(lab_state, fake, name: str, targets: list[str], **spec) -> str:
    api, _conf, made = fake
    devices = []
    for target in targets:
        volume = f"{name}-{target}"
        api.make_volume(volume, 64 << 20, mkfs=True)
        devices.append(api.device(volume))
    made.append(name)
    return lab_vm(lab_state, name, size_mib=64, block_disks=tuple(devices), **spec)


@pytest.fixture(scope="module")
def sp_vm(lab_state, fake) -> str:
    return _vm_on_volumes(lab_state, fake, SP4, TARGETS, file_disks=0, rbd_disks=0)


@pytest.fixture()
def engine(snap_env, fake):
    from kvmkit.snapshot.engine import Engine

    return Engine.from_config("qemu:///system")


def storpool_driver(engine):
    return by_name("storpool", engine.drivers)


def client(api: FakeStorPoolApi) -> spapi.Api:
    return spapi.Api(host=api.host, port=api.port, auth=api.token, transientRetries=0)


def write_random(dom, targets: list[str], name: str) -> list[str]:
    script = " && ".join(f"dd if=/dev/urandom of=/mnt/{t}/{name} bs=64k count=16 2>/dev/null" for t in targets)
    agent.guest_shell(dom, script + " && sync")
    return sums(dom, targets, name)


def sums(dom, targets: list[str], name: str) -> list[str]:
    out = agent.guest_shell(dom, " ; ".join(f"md5sum /mnt/{t}/{name}" for t in targets))
    return [line.split()[0] for line in out.strip().splitlines()]


def test_quiesced_snapshot_of_four_storpool_disks_is_one_freeze_then_delete(engine, conn, fake, sp_vm):
    api = fake[0]
    dom = conn.lookupByName(sp_vm)
    before = api.count("VolumeSnapshot")
    snap = engine.create(sp_vm, "q1")
    assert snap.mode is Mode.QUIESCED and snap.freeze_ms > 0
    assert [(d.target, d.driver) for d in snap.disks] == [(t, "storpool") for t in TARGETS]
    assert api.count("VolumeSnapshot") == before + 4 and api.count("VolumesGroupSnapshot") == 0
    for d in snap.disks:
        tags = api.snapshots[d.handle].tags
        assert tags[TAG_VM] == dom.UUIDString() and tags[TAG_SNAP] == "q1"
        assert tags[TAG_OWNER] == engine.catalog.catalog_id
        assert tags[TAG_VOLUME] == api.volumes[f"{sp_vm}-{d.target}"].global_id
    engine.delete(sp_vm, "q1")
    assert not [h for h in api.snapshots if h.endswith("--q1")]
    assert engine.catalog.list(dom.UUIDString()) == []


def test_concurrent_volume_snapshots_cost_about_one_call(engine, fake, sp_vm):
    api = fake[0]
    c = client(api)
    gid = api.volumes[f"{sp_vm}-vda"].global_id
    singles = []
    for i in range(3):
        t0 = time.perf_counter()
        c.snapshotCreate("~" + gid, {"name": f"probe-{i}"})
        singles.append((time.perf_counter() - t0) * 1000)
        c.snapshotDelete(f"probe-{i}")
    one_ms = sorted(singles)[1]
    windows = []
    for name in ("w1", "w2"):  # the better of two: a shared 2-core box has bursts
        windows.append(engine.create(sp_vm, name).storage_ms)
        engine.delete(sp_vm, name)
    assert min(windows) < 2.5 * one_ms + 30, (windows, singles)  # a loop of 4 would be ~4×


def test_group_snapshot_is_one_api_call_and_never_freezes(engine, conn, fake, sp_vm):
    api = fake[0]
    dom = conn.lookupByName(sp_vm)
    seen: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.add(agent.freeze_status(dom))
            seen.add(str(dom.state()[0]))

    sampler = threading.Thread(target=sample)
    calls_before = len(api.calls)
    sampler.start()
    try:
        snap = engine.create(sp_vm, "g1", crash_consistent=True)
    finally:
        stop.set()
        sampler.join()
    assert snap.mode is Mode.GROUP and snap.freeze_ms == 0.0 and snap.pause_ms is None
    assert seen == {"thawed", "1"}, seen  # never frozen, never paused (1 = running)
    posts = [e for m, e in api.calls[calls_before:] if m == "POST"]
    assert posts == ["VolumesGroupSnapshot"]
    assert len({d.group for d in snap.disks}) == 1
    assert all(api.snapshots[d.handle].tags[TAG_VM] == dom.UUIDString() for d in snap.disks)
    engine.delete(sp_vm, "g1")
    assert not [h for h in api.snapshots if h.endswith("--g1")]


@pytest.mark.parametrize("crash", [False, True], ids=["quiesced", "group"])
def test_revert_restores_guest_checksums(engine, conn, fake, sp_vm, crash):
    api = fake[0]
    dom = conn.lookupByName(sp_vm)
    name = f"rev{int(crash)}"
    wanted = write_random(dom, TARGETS, "data")
    engine.create(sp_vm, name, crash_consistent=crash)
    changed = write_random(dom, TARGETS, "data")
    assert changed != wanted
    engine.revert(sp_vm, name, force_stop=True)
    dom = conn.lookupByName(sp_vm)
    assert sums(dom, TARGETS, "data") == wanted
    assert not [h for h in api.snapshots if "prerevert" in h]  # the safety snapshots went with the commit
    assert api.count("VolumeRevert") >= 4
    engine.delete(sp_vm, name)


def test_api_errors_are_one_line_and_change_nothing(engine, conn, fake, sp_vm, sp_env, tmp_path):
    api = fake[0]
    dom = conn.lookupByName(sp_vm)
    # a name already taken on the cluster (by anyone): exit 4, one line, guest never frozen
    c = client(api)
    c.snapshotCreate(f"{sp_vm}-vdc", {"name": f"kvmkit--{sp_vm}-vdc--taken"})
    out = kvmkit(sp_env, "snapshot", "create", sp_vm, "--name", "taken")
    assert out.returncode == 4 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "already exists; kvmkit will not overwrite it" in out.stderr
    assert [h for h in api.snapshots if h.endswith("--taken")] == [f"kvmkit--{sp_vm}-vdc--taken"]
    c.snapshotDelete(f"kvmkit--{sp_vm}-vdc--taken")
    # the API unreachable: exit 5, one line, before any freeze, no token in it
    dead = tmp_path / "dead.conf"
    dead.write_text(f"SP_API_HTTP_HOST=127.0.0.1\nSP_API_HTTP_PORT=9\nSP_AUTH_TOKEN={api.token}\n")
    t0 = time.monotonic()
    out = kvmkit({**sp_env, "KVMKIT_STORPOOL_CONF": str(dead)}, "snapshot", "create", sp_vm, "--name", "dead1")
    assert out.returncode == 5 and "cannot reach the StorPool API at 127.0.0.1:9" in out.stderr, out.stderr
    assert api.token not in out.stderr + out.stdout and time.monotonic() - t0 < 30
    assert engine.catalog.list(dom.UUIDString()) == [] and agent.freeze_status(dom) == "thawed"
    # a revert of a volume a running VM holds open: the detach before it is refused (never forced), one line,
    # and the volume stays attached where it was
    snap = engine.create(sp_vm, "inuse")
    driver = storpool_driver(engine)
    disk = next(d for d in live_disks(dom) if d.target == "vda")
    staged = driver.stage_revert(disk, snap.disks[0], RevertOptions())
    with pytest.raises(OperationFailed, match=r"detaching StorPool volume .* is open on client"):
        driver.swap(staged)
    assert api.volumes[f"{sp_vm}-vda"].attached == {1: "rw"} and api.volumes[f"{sp_vm}-vda"].loop
    driver.commit(staged)
    engine.delete(sp_vm, "inuse")


def test_kill_9_mid_snapshot_then_recover_leaves_nothing(engine, conn, fake, sp_vm, sp_env):
    api = fake[0]
    dom = conn.lookupByName(sp_vm)
    api.snapshot_entered.clear()
    api.gate.clear()  # every VolumeSnapshot call now waits inside the fake: kvmkit is mid-snapshot, guest frozen
    proc = subprocess.Popen([sys.executable, "-m", "kvmkit", "snapshot", "create", sp_vm, "--name", "kill1"],
                            env=sp_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert api.snapshot_entered.wait(60), "kvmkit never reached the snapshot calls"
        assert agent.freeze_status(dom) == "frozen"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        api.gate.set()  # the cluster finishes what it was asked: snapshots exist that no ready row describes
        if proc.poll() is None:
            proc.kill()
    wait_thawed(dom, 15)
    time.sleep(0.5)  # let the fake finish the calls it held
    assert [h for h in api.snapshots if h.endswith("--kill1")]
    # an orphan kvmkit made but never catalogued (tagged as ours), and another tool's snapshot beside it
    vol = api.volumes[f"{sp_vm}-vdb"]
    c = client(api)
    c.snapshotCreate(vol.name, {"name": f"kvmkit--{vol.name}--orphan1",
                                "tags": {TAG_OWNER: engine.catalog.catalog_id, TAG_VOLUME: vol.global_id}})
    c.snapshotCreate(vol.name, {"name": "someone-elses", "tags": {"owner": "other"}})
    rec = kvmkit(sp_env, "snapshot", "recover", "--json")
    assert rec.returncode == 0, rec.stderr
    actions = json.loads(rec.stdout)["actions"]
    assert {"vm": sp_vm, "action": "deleted orphan", "detail": f"kvmkit--{vol.name}--orphan1",
            "handle": f"kvmkit--{vol.name}--orphan1", "whose": "ours", "owner": engine.catalog.catalog_id} in actions
    assert any(a["vm"] == sp_vm and a["action"] == "discarded half-made" and "kill1" in a["detail"]
               for a in actions), actions
    assert engine.catalog.list(dom.UUIDString()) == []
    assert not [h for h in api.snapshots if h.endswith("--kill1") or h.endswith("--orphan1")]
    assert "someone-elses" in api.snapshots
    c.snapshotDelete("someone-elses")


def test_a_second_catalogs_recover_reports_the_firsts_storpool_snapshots_and_deletes_none(
        engine, fake, sp_vm, sp_env, tmp_path):
    """Two state dirs (two catalogs) on one host and one StorPool cluster: catalog B's recover must take none of
    catalog A's snapshots for orphans — it reports them as foreign, by the `kvmkit` tag — and can adopt an unmarked
    kvmkit-named snapshot, which it then tags with its own id."""
    from kvmkit.snapshot.catalog import Catalog

    api = fake[0]
    second_dir = tmp_path / "second-state"
    second = {**sp_env, "KVMKIT_STATE_DIR": str(second_dir)}
    made = kvmkit(sp_env, "snapshot", "create", sp_vm, "--name", "ownA", "--crash-consistent", "--json")
    assert made.returncode == 0, made.stderr
    handles = sorted(d["handle"] for d in json.loads(made.stdout)["snapshots"][0]["disks"])
    assert len(handles) == 4 and all(api.snapshots[h].tags[TAG_OWNER] == engine.catalog.catalog_id for h in handles)
    vol = api.volumes[f"{sp_vm}-vdb"]
    by_hand = f"kvmkit--{vol.name}--byhand"  # kvmkit's naming, no tags: made by hand or before ownership
    client(api).snapshotCreate(vol.name, {"name": by_hand})
    try:
        out = kvmkit(second, "snapshot", "recover", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        mine = [f for f in report["foreign"] if f["vm"] == sp_vm]
        assert sorted(f["handle"] for f in mine) == handles
        assert {f["owner"] for f in mine} == {engine.catalog.catalog_id}
        assert [u["handle"] for u in report["unknown"] if u["vm"] == sp_vm] == [by_hand]
        assert not [a for a in report["actions"] if a["vm"] == sp_vm and a["action"].startswith(("deleted",
                                                                                                 "purged"))]
        assert all(h in api.snapshots for h in [*handles, by_hand])  # nothing deleted
        # B cannot take the name either: refused at plan, before any freeze, nothing changed
        taken = kvmkit(second, "snapshot", "create", sp_vm, "--name", "ownA")
        assert taken.returncode == 4 and "already exists" in taken.stderr, taken.stderr
        # A's own recover sees its snapshots as its rows; the unmarked one is unknown to it too
        own = json.loads(kvmkit(sp_env, "snapshot", "recover", "--vm", sp_vm, "--json").stdout)
        assert own["foreign"] == [] and [u["handle"] for u in own["unknown"]] == [by_hand]
        assert kvmkit(sp_env, "snapshot", "delete", sp_vm, "ownA", "--yes").returncode == 0
        assert not [h for h in handles if h in api.snapshots]
        # B adopts the unmarked one: a row in B's catalog, then the snapshot tagged with B's id
        adopt = kvmkit(second, "snapshot", "recover", "--adopt", "--vm", sp_vm, "--json")
        assert adopt.returncode == 0, adopt.stderr
        b_id = Catalog(second_dir / "catalog.sqlite").catalog_id
        assert b_id != engine.catalog.catalog_id and api.snapshots[by_hand].tags[TAG_OWNER] == b_id
        listed = json.loads(kvmkit(second, "snapshot", "list", sp_vm, "--json").stdout)
        assert [(s["name"], s["mode"], [d["handle"] for d in s["disks"]]) for s in listed] == [
            ("byhand", "crash", [by_hand])]
        assert kvmkit(second, "snapshot", "delete", sp_vm, "byhand", "--yes").returncode == 0
        assert by_hand not in api.snapshots
    finally:
        if made.returncode == 0 and any(h in api.snapshots for h in handles):
            kvmkit(sp_env, "snapshot", "delete", sp_vm, "ownA", "--yes")
        if by_hand in api.snapshots:
            client(api).snapshotDelete(by_hand)


def test_mixed_vm_file_rbd_storpool_gets_one_freeze(engine, conn, lab_state, fake):
    vm = _vm_on_volumes(lab_state, fake, SPMIX, ["vdc"], file_disks=1, rbd_disks=1)
    api = fake[0]
    snap = engine.create(vm, "mix1")
    assert snap.mode is Mode.QUIESCED
    assert [(d.target, d.driver) for d in snap.disks] == [("vda", "file"), ("vdb", "rbd"), ("vdc", "storpool")]
    assert api.snapshots[f"kvmkit--{vm}-vdc--mix1"].tags[TAG_SNAP] == "mix1"
    engine.delete(vm, "mix1")
    assert f"kvmkit--{vm}-vdc--mix1" not in api.snapshots


def test_a_snapshot_is_read_through_a_read_only_attachment(engine, conn, fake, sp_vm):
    import hashlib

    api = fake[0]
    dom = conn.lookupByName(sp_vm)
    snap = engine.create(sp_vm, "read1")
    write_random(dom, ["vda"], "later")  # the volume moves on; the snapshot must not
    disk_snap = snap.disks[0]
    driver = storpool_driver(engine)
    driver.endpoint = dataclasses.replace(driver.endpoint, client_id=1)

    def digest(path) -> str:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    with driver.reading(disk_snap) as device:
        assert device.is_block_device() and os.path.realpath(device).startswith("/dev/loop")
        assert _write_refused(device)  # attached read-only
        assert digest(device) == digest(api.snapshots[disk_snap.handle].path)
        assert digest(device) != digest(api.volumes[disk_snap.location["volume"]].path)
    assert not device.exists()  # detached again
    engine.delete(sp_vm, "read1")


def _write_refused(device) -> bool:
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError:
        return True
    try:
        os.pwrite(fd, b"x", 0)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_storpool_snapshot_is_backed_up_through_its_driver_and_restores_byte_for_byte(
        engine, conn, fake, sp_vm, tmp_path):
    """Backup reads a StorPool snapshot only through the driver's `open_reader` (attached read-only, detached
    after): no StorPool branch in backup. Every disk restores to the bytes of its snapshot."""
    import hashlib

    from kvmkit.backup import restore
    from kvmkit.backup.create import Backup
    from kvmkit.backup.targets import open_target
    from kvmkit.config import BackupTarget, Settings
    from tests.conftest import URI

    api = fake[0]
    snap = engine.create(sp_vm, "bk1")
    driver = storpool_driver(engine)
    driver.endpoint = dataclasses.replace(driver.endpoint, client_id=1)
    (tmp_path / "target").mkdir()
    settings = Settings(state_dir=tmp_path / "state", libvirt_uri=URI,
                        backup_targets=[BackupTarget(name="t", path=tmp_path / "target")])
    manifest = Backup(settings, open_target(settings, "t"), "zstd", lambda _n: None, drivers=engine.drivers).run(snap)
    assert [d.driver for d in manifest.disks] == ["storpool"] * len(TARGETS)
    assert not any(Path(f"/dev/storpool/{d.handle}").exists() for d in snap.disks)  # every one detached again

    def digest(path) -> str:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    restore.restore(settings, sp_vm, "bk1", to=[f"{t}={tmp_path / t}.raw" for t in TARGETS])
    for disk in snap.disks:
        assert digest(tmp_path / f"{disk.target}.raw") == digest(api.snapshots[disk.handle].path), disk.target
    engine.delete(sp_vm, "bk1")
