"""Backups of real running VMs on the lab: guest writes, quiesced snapshots (reflink files and RBD), full and
incremental backups, disks destroyed, restored, and the guest's own checksums compared."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kvmkit.backup import manage, restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import Conflict
from kvmkit.jobs import schedule
from kvmkit.lab import lab
from kvmkit.lab.disks import purge_rbd_image
from kvmkit.lab.state import load
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.engine import Engine
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State
from kvmkit.virt import agent
from tests.backup.conftest import changed_bytes

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab_settings(lab_state, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("backup-lab")
    (root / "target").mkdir()
    return Settings(state_dir=root / "state", lab_dir=lab_state.dir, libvirt_uri=lab_state.uri,
                    backup_targets=[BackupTarget(name="secondary", path=root / "target")])


@pytest.fixture(scope="module")
def engine(lab_settings) -> Engine:
    return Engine(uri=lab_settings.libvirt_uri, state_dir=lab_settings.state_dir,
                  catalog=Catalog(lab_settings.catalog_path))


@pytest.fixture(scope="module")
def file_vm(lab_state) -> str:
    """Named after the lab folder (blab-bkf, tlab-bkf …): labs of parallel test sessions share one libvirt."""
    name = f"{lab_state.dir.name}-bkf"
    state = load(lab_state.dir)
    if state.vm(name) is None:
        lab.add_vm(state, name, file_disks=2, rbd_disks=0, size_mib=64)
    return name


def write_random(dom, path: str, mib: int) -> str:
    return agent.guest_shell(dom, f"dd if=/dev/urandom of={path} bs=64k count={16 * mib} 2>/dev/null && sync "
                                  f"&& sha256sum {path}").split()[0]


def checksum(dom, path: str) -> str:
    return agent.guest_shell(dom, f"sha256sum {path}").split()[0]


def restart(lab_state, conn, vm: str):
    lab.start_vms(load(lab_state.dir), [vm])
    return conn.lookupByName(vm)


def test_file_disks_full_incremental_destroy_restore_checksums_match(lab_settings, engine, conn, file_vm, lab_state):
    dom = conn.lookupByName(file_vm)
    first = write_random(dom, "/mnt/vda/first", 4)
    s1 = engine.create(file_vm, "bk1")
    m1 = backup_snapshot(lab_settings, s1)
    assert m1.kind.value == "full" and {d.target for d in m1.disks} == {"vda", "vdb"}
    second = write_random(dom, "/mnt/vdb/second", 8)
    third = write_random(dom, "/mnt/vda/third", 4)
    first = agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/first bs=64k seek=5 count=40 conv=notrunc "
                                   "2>/dev/null && sync && sha256sum /mnt/vda/first").split()[0]
    s2 = engine.create(file_vm, "bk2")
    m2 = backup_snapshot(lab_settings, s2)
    assert m2.kind.value == "incremental" and m2.parent == "bk1"
    truth = sum(changed_bytes(Path(a.handle), Path(b.handle)) for a, b in zip(s1.disks, s2.disks, strict=True))
    assert truth >= 14 << 20
    print(f"\nfile incremental: changed {truth} B (4 KiB blocks), wrote {m2.written_bytes} B + manifest "
          f"{m2.manifest_bytes} B = {m2.written_bytes / truth:.3f}×")
    assert m2.written_bytes <= 1.05 * truth + m2.manifest_bytes

    with pytest.raises(Conflict, match=f"is disk vd. of VM {file_vm}; it is not shut off"):
        restore.restore(lab_settings, file_vm, "bk1", replace=True, force_offline=True)
    alias = f"vda={Path(s2.disks[0].source).parent}/./{Path(s2.disks[0].source).name}"  # issue 15's alias repro
    with pytest.raises(Conflict, match=f"is disk vda of VM {file_vm}"):
        restore.restore(lab_settings, file_vm, "bk1", to=[alias], replace=True)
    dom.destroy()
    for disk in s2.disks:
        Path(disk.source).unlink()  # the VM's disks are gone; the snapshots beside them do not matter here
    with pytest.raises(Exception, match=r"Cannot access storage file|No such file"):
        dom.create()
    with pytest.raises(Conflict, match="it is shut off: pass --force-offline"):
        restore.restore(lab_settings, file_vm, "bk2")  # a defined VM's disk, even shut off: only when asked
    result = restore.restore(lab_settings, file_vm, "bk2", force_offline=True)
    assert sorted(d.destination for d in result.disks) == sorted(d.source for d in s2.disks)
    dom = restart(lab_state, conn, file_vm)
    assert checksum(dom, "/mnt/vda/first") == first
    assert checksum(dom, "/mnt/vdb/second") == second
    assert checksum(dom, "/mnt/vda/third") == third
    assert restore.verify(lab_settings, file_vm).ok


def rbd_snapshot(lab_state, conn, vm: str, name: str) -> Snapshot:
    """A quiesced RBD snapshot of the VM's RBD disk, taken here with librbd under the test's control (so the test
    can drop one behind kvmkit's back): freeze, create_snap, thaw, and the record the engine writes, with the
    cluster it was taken on (the lab's disks name their ceph.conf). Named as the RBD driver names its own
    (`kvmkit-<snapshot>`): an incremental asks diff_iterate only about kvmkit's own snapshots (issue 23)."""
    import rados
    import rbd

    state = load(lab_state.dir)
    disk = next(d for d in state.vm(vm).disks if d.kind == "rbd")
    pool, image = disk.source.split("/")
    dom = conn.lookupByName(vm)
    cluster = rados.Rados(conffile=str(state.ceph.conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
            agent.freeze(dom)
            try:
                img.create_snap(f"kvmkit-{name}")
            finally:
                agent.thaw(dom)
            size = img.size()
    finally:
        cluster.shutdown()
    return Snapshot(vm_uuid=dom.UUIDString(), vm=vm, name=name, created=datetime.now(), mode=Mode.QUIESCED,
                    state=State.READY, disks=[DiskSnapshot(target=disk.target, driver="rbd", source=disk.source,
                                                           handle=f"{disk.source}@kvmkit-{name}", size_bytes=size,
                                                           location={"conf": str(state.ceph.conf)})])


def drop_rbd_snapshot(lab_state, source: str, name: str) -> None:
    import rados
    import rbd

    pool, image = source.split("/")
    cluster = rados.Rados(conffile=str(load(lab_state.dir).ceph.conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image) as img:
            img.remove_snap(f"kvmkit-{name}")
    finally:
        cluster.shutdown()


def test_rbd_disk_incremental_reads_only_changed_extents_and_restores(lab_settings, conn, lab_state):
    vm = f"{lab_state.dir.name}1"
    dom = conn.lookupByName(vm)
    first = write_random(dom, "/mnt/vdb/first", 4)
    s1 = rbd_snapshot(lab_state, conn, vm, "rbk1")
    m1 = backup_snapshot(lab_settings, s1)
    size = m1.disks[0].size_bytes
    assert m1.kind.value == "full" and m1.disks[0].read_bytes < size / 2  # unallocated extents never read
    second = write_random(dom, "/mnt/vdb/second", 8)
    # and 3 MiB rewritten in place, in the middle of the first file: old data around it stays in its chunks
    first = agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vdb/first bs=64k seek=9 count=48 conv=notrunc "
                                   "2>/dev/null && sync && sha256sum /mnt/vdb/first").split()[0]
    s2 = rbd_snapshot(lab_state, conn, vm, "rbk2")
    t0 = time.perf_counter()
    m2 = backup_snapshot(lab_settings, s2)
    disk = m2.disks[0]
    print(f"\nrbd incremental: diff_iterate {disk.diff_bytes} B changed, read {disk.read_bytes} B, wrote "
          f"{disk.written_bytes} B + manifest {m2.manifest_bytes} B = {disk.written_bytes / disk.diff_bytes:.3f}× "
          f"in {time.perf_counter() - t0:.2f} s")
    assert m2.parent == "rbk1" and not disk.full
    assert 11 << 20 <= disk.diff_bytes < 32 << 20
    assert disk.read_bytes <= disk.diff_bytes + 2 * m2.chunk_size * (1 + len(disk.chunks))  # changed chunks only
    assert disk.written_bytes <= 1.05 * disk.diff_bytes + m2.manifest_bytes

    # the parent's RBD snapshot is gone: the next backup reads the allocated extents and compares hashes instead
    drop_rbd_snapshot(lab_state, disk.source, "rbk2")
    agent.guest_shell(dom, "echo more > /mnt/vdb/small && sync")
    m3 = backup_snapshot(lab_settings, rbd_snapshot(lab_state, conn, vm, "rbk3"))
    assert m3.parent == "rbk2" and m3.disks[0].diff_bytes is None and not m3.disks[0].full
    assert m3.disks[0].read_bytes > m3.disks[0].changed_bytes and m3.written_bytes < 256 << 10

    dom.destroy()
    pool, image = disk.source.split("/")
    purge_rbd_image(load(lab_state.dir).ceph.conf, pool, image)  # the disk and its snapshots are gone
    restore.restore(lab_settings, vm, "rbk2", force_offline=True)
    dom = restart(lab_state, conn, vm)
    assert checksum(dom, "/mnt/vdb/first") == first
    assert checksum(dom, "/mnt/vdb/second") == second


def test_schedule_on_a_fake_clock_prunes_real_snapshots_and_backups(lab_settings, engine, conn, file_vm):
    vm_uuid = conn.lookupByName(file_vm).UUIDString()
    manual = engine.create(file_vm, "manual-keep")
    schedule.add(lab_settings, schedule.Schedule(vm=file_vm, every_s=3600, keep_last=2, keep_daily=2, backup=True))
    t0 = datetime(2026, 11, 2, 10, 0)
    clock = [t0, t0 + timedelta(minutes=30), t0 + timedelta(hours=1), t0 + timedelta(hours=2),
             t0 + timedelta(days=1), t0 + timedelta(days=1, hours=1)]
    for now in clock:
        actions = schedule.run_once(lab_settings, now, engine.context)
        assert not [a for a in actions if a.action == "error"], actions
    names = sorted(s.name for s in engine.catalog.list(vm_uuid) if s.name.startswith("sched-"))
    # 10:30 was not due; keep_last 2 → day 2 at 10:00 and 11:00; keep_daily 2 → day 2 11:00 and day 1 12:00
    assert names == ["sched-20261102-120000", "sched-20261103-100000", "sched-20261103-110000"]
    backups = {m.snapshot: m for m in manage.list_backups(lab_settings, file_vm)[0]}
    assert sorted(n for n in backups if n.startswith("sched-")) == names
    assert backups["sched-20261102-120000"].parent is None  # rebased: its parents were pruned
    assert restore.verify(lab_settings, file_vm).ok
    assert engine.catalog.find(vm_uuid, manual.name) is not None


def test_backup_create_by_cli_then_verify(lab_settings, engine, file_vm, tmp_path):
    import json
    import os

    from tests.backup.test_backup_cli import kvmkit

    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{lab_settings.state_dir}"\nlab_dir = "{lab_settings.lab_dir}"\n'
                      f'libvirt_uri = "{lab_settings.libvirt_uri}"\n[[backup_targets]]\nname = "secondary"\n'
                      f'path = "{lab_settings.backup_targets[0].path}"\n')
    # the environment wins over the config: a session fixture of the snapshot tests may have set KVMKIT_STATE_DIR
    env = {**os.environ, "KVMKIT_CONFIG": str(config), "KVMKIT_STATE_DIR": str(lab_settings.state_dir)}
    engine.create(file_vm, "cli1")
    out = kvmkit(env, "backup", "create", file_vm, "cli1", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["snapshot"] == "cli1" and data["vm"] == file_vm and {d["disk"] for d in data["disks"]} == {"vda",
                                                                                                          "vdb"}
    again = kvmkit(env, "backup", "create", file_vm, "cli1")
    assert again.returncode == 4 and "already backed up" in again.stderr
    missing = kvmkit(env, "backup", "create", file_vm, "never-taken")
    assert missing.returncode == 3 and "has no snapshot named 'never-taken'" in missing.stderr
    assert kvmkit(env, "backup", "verify", file_vm, "cli1").returncode == 0


def test_snapshot_delete_is_refused_while_a_backup_holds_the_snapshot(lab_settings, engine, conn, file_vm):
    """Issue 15 item 7, through the real engine: `snapshot delete` of a snapshot a backup is reading."""
    import threading

    from kvmkit.snapshot import snapshot_lock

    snap = engine.create(file_vm, "held1")
    reading, release = threading.Event(), threading.Event()

    def backup_reading() -> None:  # what backup_snapshot holds while it reads the snapshot
        with snapshot_lock.reading(lab_settings.state_dir, snap.vm_uuid, "held1", file_vm):
            reading.set()
            release.wait(30)
    thread = threading.Thread(target=backup_reading)
    thread.start()
    try:
        assert reading.wait(10)
        with pytest.raises(Conflict, match="is being backed up"):
            engine.delete(file_vm, "held1")
        assert engine.catalog.find(snap.vm_uuid, "held1") is not None
        assert all(Path(d.handle).exists() for d in snap.disks)
    finally:
        release.set()
        thread.join()
    manifest = backup_snapshot(lab_settings, snap)  # takes and releases the same lock
    engine.delete(file_vm, "held1")
    assert engine.catalog.find(snap.vm_uuid, "held1") is None
    assert not any(Path(d.handle).exists() for d in snap.disks)
    assert restore.verify(lab_settings, file_vm, "held1").ok and manifest.disks
