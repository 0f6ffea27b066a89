"""Snapshots of VMs laid out as CloudStack, Nova and virt-manager lay theirs out, on a Ceph with cephx whose keys
live only in libvirt secrets (no keyring kvmkit can read, no ceph.conf named by the disks)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmkit.errors import EnvironmentProblem, NotFound
from kvmkit.lab import lab, shapes
from kvmkit.lab.state import LabState, load
from kvmkit.snapshot.model import Mode, State
from kvmkit.virt import agent
from kvmkit.virt.connection import live_disks
from tests.conftest import TEST_LAB_DIR, URI
from tests.snapshot.test_snapshot_live import checksum, write_random

pytestmark = pytest.mark.lab

SHAPED_LAB = TEST_LAB_DIR.with_name(TEST_LAB_DIR.name + "-shapes")
SHAPES = ("cloudstack", "nova", "libvirt")


def vm_of(shape: str) -> str:
    return f"{SHAPED_LAB.name}-{shape}1"


@pytest.fixture(scope="module")
def shaped_lab(lab_state) -> Iterator[LabState]:
    """A second lab beside the test lab: its Ceph requires cephx; one VM of each shape, booted together."""
    lab.down(SHAPED_LAB)
    lab.up(SHAPED_LAB, URI, vms=0, shape="cloudstack")
    state = load(SHAPED_LAB)
    assert state is not None and state.ceph is not None and state.ceph.auth == "cephx"
    try:
        for shape in SHAPES:
            lab.add_shaped_vm(state, vm_of(shape), shape, size_mib=64, start=False)
        lab.start_vms(state, [vm_of(shape) for shape in SHAPES])
        yield state
    finally:
        lab.down(SHAPED_LAB)


def test_shapes_define_disks_as_the_clouds_do(shaped_lab, conn):
    cloudstack = live_disks(conn.lookupByName(vm_of("cloudstack")))
    assert [(d.target, d.kind, d.format) for d in cloudstack] == [
        ("vda", "file", "qcow2"), ("vdb", "file", "qcow2"), ("vdc", "network", "raw"), ("vdd", "network", "raw")]
    assert cloudstack[0].has_backing_chain and "." not in cloudstack[0].source.rsplit("/", 1)[1]
    for rbd_disk in cloudstack[2:]:
        assert rbd_disk.config_file is None and rbd_disk.hosts and rbd_disk.auth_username == "cloudstack"
        assert rbd_disk.auth_secret_uuid and rbd_disk.source.startswith("cloudstack/")
    nova = live_disks(conn.lookupByName(vm_of("nova")))
    assert nova[0].source.startswith("vms/") and nova[0].source.endswith("_disk")
    assert nova[1].has_backing_chain and nova[1].source.endswith("/disk.local")
    chained = live_disks(conn.lookupByName(vm_of("libvirt")))
    assert all(d.has_backing_chain and d.format == "qcow2" for d in chained)
    # no keyring file holds the shapes' users: the admin keyring is 0600 and names only mon., admin and osd.0
    keyring = (shaped_lab.ceph.dir / "keyring").read_text()
    assert "client.cloudstack" not in keyring and "client.nova" not in keyring


@pytest.mark.parametrize("shape", SHAPES)
def test_quiesced_snapshot_and_revert_restore_every_disk_of_a_shaped_vm(shape, shaped_lab, engine, conn):
    vm = vm_of(shape)
    dom = conn.lookupByName(vm)
    layout = [(d.target, d.kind, d.format, d.source, d.has_backing_chain) for d in live_disks(dom)]
    targets = [t for t, *_ in layout]
    if shape == "nova":  # Nova's root disk is a clone of its Glance image: not kvmkit's to flatten
        glance = ("images", shapes.lab_uuid(shaped_lab, "nova-glance-image"), "snap")
        assert _rbd_parent(shaped_lab, layout[0][3]) == glance
        assert engine.flatten(vm) == []
        assert _rbd_parent(shaped_lab, layout[0][3]) == glance
    before = {t: write_random(dom, f"/mnt/{t}/shape") for t in targets}
    snap = engine.create(vm, "shape1")
    assert snap.state is State.READY and snap.mode is Mode.QUIESCED
    assert sorted(d.target for d in snap.disks) == sorted(targets)
    for t in targets:
        agent.guest_shell(dom, f"rm /mnt/{t}/shape && sync")
    engine.revert(vm, "shape1", force_stop=True)
    lab.wait_for_agent(conn.lookupByName(vm), None)
    dom = conn.lookupByName(vm)
    assert {t: checksum(dom, f"/mnt/{t}/shape") for t in targets} == before
    # the VM keeps its layout: same sources, qcow2 overlays still on their templates/bases
    assert [(d.target, d.kind, d.format, d.source, d.has_backing_chain) for d in live_disks(dom)] == layout
    # a revert by clone left RBD disks as clones of the snapshot: flatten frees it
    rbd_targets = sorted(d.target for d in live_disks(dom) if d.kind == "network")
    assert sorted(engine.flatten(vm)) == rbd_targets
    engine.delete(vm, "shape1")
    with pytest.raises(NotFound):
        engine.delete(vm, "shape1")


def _rbd_parent(state: LabState, spec: str) -> tuple[str, str, str]:
    import rados
    import rbd

    assert state.ceph is not None
    pool, _, image = spec.partition("/")
    cluster = rados.Rados(conffile=str(state.ceph.conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as img:
            return img.parent_info()
    finally:
        cluster.shutdown()


def test_crash_consistent_snapshot_of_a_cloudstack_vm(shaped_lab, engine):
    snap = engine.create(vm_of("cloudstack"), "crash1", crash_consistent=True)
    assert snap.state is State.READY and snap.mode is Mode.CRASH  # file + RBD disks: no one group, so a pause
    engine.delete(vm_of("cloudstack"), "crash1")


def _redefine_secret(conn: libvirt.virConnect, secret_uuid: str, private: bool, key: bytes) -> None:
    secret = conn.secretLookupByUUIDString(secret_uuid)
    usage = secret.usageID()
    secret.undefine()  # libvirt cannot flip the private flag of an existing secret
    conn.secretDefineXML(f"<secret ephemeral='no' private='{'yes' if private else 'no'}'><uuid>{secret_uuid}</uuid>"
                         f"<usage type='ceph'><name>{usage}</name></usage></secret>").setValue(key)


def test_a_private_secret_is_one_line_naming_what_to_configure_and_nothing_changes(shaped_lab, engine, conn):
    vm = vm_of("cloudstack")
    vm_uuid = conn.lookupByName(vm).UUIDString()
    secret_uuid = shapes.lab_uuid(shaped_lab, "cloudstack-rbd-secret")
    key = conn.secretLookupByUUIDString(secret_uuid).value()
    before = engine.catalog.list(vm_uuid)
    _redefine_secret(conn, secret_uuid, private=True, key=key)
    try:
        with pytest.raises(EnvironmentProblem) as err:
            engine.create(vm, "private1")
        message = str(err.value)
        assert "private" in message and "[ceph] keyring" in message and "client.cloudstack" in message
        assert base64.b64encode(key).decode() not in message and "\n" not in message
    finally:
        _redefine_secret(conn, secret_uuid, private=False, key=key)
    assert engine.catalog.list(vm_uuid) == before


def test_a_secret_that_does_not_exist_is_one_line(shaped_lab, engine, conn):
    vm = vm_of("nova")
    secret_uuid = shapes.lab_uuid(shaped_lab, "nova-rbd-secret")
    secret = conn.secretLookupByUUIDString(secret_uuid)
    key, usage = secret.value(), secret.usageID()
    secret.undefine()
    try:
        with pytest.raises(NotFound, match=f"libvirt secret {secret_uuid} .* does not exist"):
            engine.create(vm, "nosecret1")
    finally:
        conn.secretDefineXML(f"<secret ephemeral='no' private='no'><uuid>{secret_uuid}</uuid>"
                             f"<usage type='ceph'><name>{usage}</name></usage></secret>").setValue(key)


def test_a_qcow2_chain_is_backed_up_as_the_guest_sees_it_and_restores_self_contained(
        shaped_lab, engine, conn, tmp_path):
    """libvirt shape: qcow2 top → mid → base. The backup holds guest-visible content (not the 200 KiB top
    container); the restore is a raw file with no backing file that reads equal to the snapshot's chain."""
    import json
    import subprocess

    from kvmkit.backup import restore
    from kvmkit.backup.create import backup_snapshot
    from kvmkit.config import BackupTarget, Settings

    vm = vm_of("libvirt")
    dom = conn.lookupByName(vm)
    write_random(dom, "/mnt/vda/chain", 2)
    snap = engine.create(vm, "chain1")
    (tmp_path / "target").mkdir()
    settings = Settings(state_dir=tmp_path / "state", libvirt_uri=URI,
                        backup_targets=[BackupTarget(name="t", path=tmp_path / "target")])
    manifest = backup_snapshot(settings, snap)
    vda = snap.disk("vda")
    assert vda is not None and vda.format == "qcow2"
    assert manifest.disk("vda").size_bytes == 64 << 20  # the virtual size, not the container's
    result = restore.restore(settings, vm, "chain1", to=[f"{t}={tmp_path / t}.raw" for t in ("vda", "vdb")])
    assert sorted(d.destination for d in result.disks) == [str(tmp_path / "vda.raw"), str(tmp_path / "vdb.raw")]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "raw", str(tmp_path / "vda.raw")],
                                     check=True, capture_output=True, text=True).stdout)
    assert "backing-filename" not in info and info["virtual-size"] == 64 << 20
    assert (tmp_path / "vda.raw").read_bytes()[:4] != b"QFI\xfb"  # content, not a qcow2 container
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(tmp_path / "vda.raw"),
                              vda.handle], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    engine.delete(vm, "chain1")


def test_a_chain_whose_base_is_missing_is_one_line_and_no_backup(shaped_lab, engine, conn, tmp_path):
    from kvmkit.snapshot.drivers.guest_view import GuestView

    orphan = tmp_path / "orphan.qcow2"
    subprocess_run = __import__("subprocess").run
    subprocess_run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(tmp_path / "gone.qcow2"), "-F",
                    "qcow2", str(orphan), "64M"], check=True)
    with pytest.raises(NotFound, match=r"backing file .*gone.qcow2 is missing"):
        GuestView(orphan, "qcow2")
    assert not list(Path("/run").glob("kvmkit-view-*"))
