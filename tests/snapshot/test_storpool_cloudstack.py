"""CloudStack on StorPool, end to end on the lab: a VM of the `cloudstack-storpool` shape (unnamed volumes of the FAKE
StorPool API, tagged as CloudStack tags them, attached read-write by /dev/storpool-byid/<globalId>), snapshotted
quiesced and as a group, reverted, deleted, backed up and restored by kvmkit — and a snapshot CloudStack made (its
tags, no kvmkit tag, anonymous) never touched by kvmkit's delete, recover or backup prune. The guest, QEMU, the freeze
and the data are real; the StorPool cluster is the fake (kvmkit.benchmarks.storpool_fake)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from storpool import spapi

from kvmkit.snapshot.drivers.storpool import TAG_OWNER, TAG_VOLUME
from kvmkit.snapshot.model import Mode
from kvmkit.virt import agent
from tests.conftest import TEST_LAB_DIR
from tests.snapshot.conftest import kvmkit

pytestmark = pytest.mark.lab
CS_VM = f"{TEST_LAB_DIR.name}-cloudstack-storpool1"
TARGETS = ["vda", "vdb"]


@pytest.fixture(scope="module")
def cs(lab_state, snap_env):
    """The shaped VM and a binding client for the lab's fake; the VM and the fake go at the end."""
    from kvmkit.benchmarks.storpool_fake import lab as storpool_lab
    from kvmkit.lab import lab
    from kvmkit.lab.state import load, locked

    with locked(lab_state.dir):
        state = load(lab_state.dir)
        if state.vm(CS_VM) is None:
            lab.add_shaped_vm(state, CS_VM, "cloudstack-storpool", size_mib=64, start=True)
    conf = storpool_lab.conf_path(state)
    os.environ["KVMKIT_STORPOOL_CONF"] = str(conf)
    api = storpool_lab.ensure_running(state)
    yield api, {**snap_env, "KVMKIT_STORPOOL_CONF": str(conf)}
    os.environ.pop("KVMKIT_STORPOOL_CONF", None)
    with locked(lab_state.dir):
        state = load(lab_state.dir)
        lab.remove_vm(state, CS_VM)
        storpool_lab.stop(state)


@pytest.fixture()
def engine(cs):
    from kvmkit.snapshot.engine import Engine

    return Engine.from_config("qemu:///system")


def volumes(api: spapi.Api) -> dict[str, object]:
    """The VM's volumes by target, from the domain's /dev/storpool-byid links."""
    from kvmkit.virt.connection import connection, live_disks

    with connection("qemu:///system") as conn:
        disks = live_disks(conn.lookupByName(CS_VM))
    return {d.target: api.volumeList("~" + Path(d.source).name)[0] for d in disks}


def write_random(dom, name: str) -> list[str]:
    script = " && ".join(f"dd if=/dev/urandom of=/mnt/{t}/{name} bs=64k count=8 2>/dev/null" for t in TARGETS)
    agent.guest_shell(dom, script + " && sync")
    return sums(dom, name)


def sums(dom, name: str) -> list[str]:
    out = agent.guest_shell(dom, " ; ".join(f"md5sum /mnt/{t}/{name}" for t in TARGETS))
    return [line.split()[0] for line in out.strip().splitlines()]


def test_the_shape_is_cloudstacks_unnamed_volumes_attached_by_global_id(cs, conn):
    api, _env = cs
    from kvmkit.virt.connection import live_disks

    disks = live_disks(conn.lookupByName(CS_VM))
    assert [(d.target, d.kind, str(Path(d.source).parent)) for d in disks] == [
        ("vda", "block", "/dev/storpool-byid"), ("vdb", "block", "/dev/storpool-byid")]
    for vol in volumes(api).values():
        assert vol.name.startswith("~") and vol.tags["cs"] == "volume" and set(vol.tags) == {"uuid", "cvm", "cs"}
    attached = {(a.volume, a.client, a.rights) for a in api.attachmentsList()}
    assert {(v.name, 1, "rw") for v in volumes(api).values()} <= attached


@pytest.mark.parametrize("crash", [False, True], ids=["quiesced", "group"])
def test_snapshot_revert_delete_round_trip(cs, engine, conn, crash):
    api, _env = cs
    dom = conn.lookupByName(CS_VM)
    name = f"csrev{int(crash)}"
    wanted = write_random(dom, "data")
    snap = engine.create(CS_VM, name, crash_consistent=crash)
    assert snap.mode is (Mode.GROUP if crash else Mode.QUIESCED)
    vols = volumes(api)
    for d in snap.disks:
        sp = api.snapshotList(d.handle)[0]
        assert d.handle == f"kvmkit--{vols[d.target].globalId}--{name}"
        assert sp.tags[TAG_OWNER] == engine.catalog.catalog_id and sp.tags[TAG_VOLUME] == vols[d.target].globalId
    assert write_random(dom, "data") != wanted
    engine.revert(CS_VM, name, force_stop=True)
    dom = conn.lookupByName(CS_VM)
    assert sums(dom, "data") == wanted
    assert {(v.name, 1, "rw") for v in volumes(api).values()} <= {
        (a.volume, a.client, a.rights) for a in api.attachmentsList()}  # re-attached as before
    engine.delete(CS_VM, name)
    assert not [s for s in api.snapshotsList() if not s.deleted and s.name.endswith(f"--{name}")]


def test_backup_and_restore_byte_for_byte(cs, engine, tmp_path):
    from kvmkit.backup import restore
    from kvmkit.backup.create import Backup
    from kvmkit.backup.targets import open_target
    from kvmkit.config import BackupTarget, Settings
    from tests.conftest import URI

    api, _env = cs
    snap = engine.create(CS_VM, "csbk1")
    (tmp_path / "target").mkdir()
    settings = Settings(state_dir=tmp_path / "state", libvirt_uri=URI,
                        backup_targets=[BackupTarget(name="t", path=tmp_path / "target")])
    manifest = Backup(settings, open_target(settings, "t"), "zstd", lambda _n: None, drivers=engine.drivers).run(snap)
    assert [d.driver for d in manifest.disks] == ["storpool", "storpool"]
    restore.restore(settings, CS_VM, "csbk1", to=[f"{t}={tmp_path / t}.raw" for t in TARGETS])
    for disk in snap.disks:  # the snapshot read again, through a read-only attachment, against the restored file
        driver = next(d for d in engine.drivers if d.name == "storpool")
        with driver.reading(disk) as device, open(device, "rb") as src, open(tmp_path / f"{disk.target}.raw",
                                                                             "rb") as out:
            assert hashlib.file_digest(src, "sha256").digest() == hashlib.file_digest(out, "sha256").digest()
    assert not api.attachmentsList() or all(not a.snapshot for a in api.attachmentsList())  # all detached again
    engine.delete(CS_VM, "csbk1")


def test_a_snapshot_cloudstack_made_is_never_touched_by_delete_recover_or_prune(cs, engine, conn, tmp_path):
    api, env = cs
    vda = volumes(api)["vda"]
    cs_tags = {"uuid": "9b0c1f5e-cs-snapshot", "cvm": vda.tags["cvm"], "cs": "snapshot"}
    made = api.snapshotCreate(vda.name, {"tags": cs_tags})  # anonymous, as StorPoolUtil.volumeSnapshot makes it
    theirs = "~" + made.snapshotGlobalId
    before = api.snapshotList(theirs)[0]
    assert before.autoName and TAG_OWNER not in before.tags
    engine.create(CS_VM, "csown1")
    engine.delete(CS_VM, "csown1")
    for args in (("snapshot", "recover", "--json"), ("snapshot", "recover", "--adopt", "--vm", CS_VM, "--json")):
        out = kvmkit(env, *args)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert not [a for a in report["actions"] if before.name in json.dumps(a) or made.snapshotGlobalId
                    in json.dumps(a)]
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "kvmkit.toml").write_text(f'[[backup_targets]]\nname = "t"\npath = "{target}"\n')
    benv = {**env, "KVMKIT_CONFIG": str(tmp_path / "kvmkit.toml")}
    for name in ("csp1", "csp2"):
        assert kvmkit(benv, "snapshot", "create", CS_VM, "--name", name).returncode == 0
        out = kvmkit(benv, "backup", "create", CS_VM, name, "--target", "t")
        assert out.returncode == 0, out.stderr
    out = kvmkit(benv, "backup", "prune", CS_VM, "--keep-last", "1", "--yes", "--target", "t")
    assert out.returncode == 0, out.stderr
    for name in ("csp1", "csp2"):
        assert kvmkit(benv, "snapshot", "delete", CS_VM, name, "--yes").returncode == 0
    after = api.snapshotList(theirs)[0]
    assert not after.deleted and after.tags == cs_tags and after.globalId == before.globalId
    api.snapshotDelete(theirs)
