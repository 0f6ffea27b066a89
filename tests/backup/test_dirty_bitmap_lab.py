"""A file disk on ext4 (no reflink): the overlay barrier starts a QEMU dirty bitmap per snapshot, so an incremental
reads only the guest's writes (also across a snapshot that was not backed up); after a VM restart (raw disk:
in-memory bitmaps) it falls back to chunk hashes, while a qcow2 disk keeps its persistent bitmaps; deleting the
snapshots removes their bitmaps and nothing else."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.backup import restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.model import ChangeMethod
from kvmkit.config import BackupTarget, Settings
from kvmkit.lab import lab
from kvmkit.lab.state import load
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.file import bitmaps
from kvmkit.snapshot.drivers.file.overlay import qmp
from kvmkit.snapshot.engine import Engine
from kvmkit.virt import agent
from kvmkit.virt.connection import open_connection
from tests.backup.conftest import changed_bytes, sha
from tests.conftest import TEST_LAB_DIR

P = TEST_LAB_DIR.name
pytestmark = pytest.mark.lab
MiB = 1 << 20


@pytest.fixture(scope="module")
def bm_vm(lab_state):
    """A VM whose one raw disk sits on a loop-mounted ext4 (FICLONE: EOPNOTSUPP)."""
    mnt, image = lab_state.dir.parent / f"{P}-bm-ext4", lab_state.dir.parent / f"{P}-bm-ext4.img"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    state = load(lab_state.dir)
    name = f"{P}-bm"
    lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=128, start=False)
    old = Path(state.vm(name).disks[0].source)
    new = mnt / old.name
    subprocess.run(["cp", "--sparse=always", str(old), str(new)], check=True)
    old.unlink()
    conn = open_connection(lab_state.uri)
    conn.defineXML(conn.lookupByName(name).XMLDesc(0).replace(str(old), str(new)))
    lab.start_vms(state, [name])
    yield name, new
    with contextlib.suppress(Exception):
        conn.lookupByName(name).destroy()
    lab.remove_vm(state, name)
    conn.close()
    subprocess.run(["umount", str(mnt)], check=False)
    image.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mnt.rmdir()


def kvmkit_bitmaps(dom, source: Path) -> dict[str, bool]:
    """name → recording, of every dirty bitmap named kvmkit-… on the disk's nodes (from QEMU itself)."""
    found = {}
    for node in qmp(dom, "query-named-block-nodes", {"flat": True}):
        if node.get("file") == str(source):
            for info in node.get("dirty-bitmaps") or []:
                if info["name"].startswith("kvmkit-"):
                    found[info["name"]] = info["recording"]
    return found


def test_dirty_bitmap_incremental_reads_only_the_writes_then_falls_back_after_a_restart(bm_vm, lab_state, conn,
                                                                                       tmp_path):
    vm, source = bm_vm
    (tmp_path / "target").mkdir()
    settings = Settings(state_dir=tmp_path / "state", lab_dir=lab_state.dir, libvirt_uri=lab_state.uri,
                        backup_targets=[BackupTarget(name="t", path=tmp_path / "target")])
    engine = Engine(uri=lab_state.uri, state_dir=settings.state_dir, catalog=Catalog(settings.catalog_path))
    dom = conn.lookupByName(vm)
    agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/base bs=64k count=256 2>/dev/null && sync")
    s1 = engine.create(vm, "bm1", allow_full_copy=True)
    assert s1.disks[0].method == "overlay" and s1.disks[0].location["dirty_bitmap"] == "kvmkit-bm1"
    assert kvmkit_bitmaps(dom, source) == {"kvmkit-bm1": True}
    t0 = time.perf_counter()
    m1 = backup_snapshot(settings, s1)
    full_s = time.perf_counter() - t0
    assert m1.disks[0].change_method is ChangeMethod.FULL

    # 64 scattered 4 KiB writes inside the 16 MiB file, 148 KiB apart
    agent.guest_shell(dom, "i=0; while [ $i -lt 64 ]; do dd if=/dev/urandom of=/mnt/vda/base bs=4k count=1 "
                           "seek=$((i*37)) conv=notrunc 2>/dev/null; i=$((i+1)); done; sync")
    s2 = engine.create(vm, "bm2", allow_full_copy=True)
    assert kvmkit_bitmaps(dom, source) == {"kvmkit-bm1": False, "kvmkit-bm2/bm1": True}
    t0 = time.perf_counter()
    m2 = backup_snapshot(settings, s2)
    inc_s = time.perf_counter() - t0
    record = m2.disks[0]
    truth = changed_bytes(Path(s1.disks[0].handle), Path(s2.disks[0].handle))
    print(f"\ndirty bitmap: changed {truth} B, bitmap {record.diff_bytes} B, read {record.read_bytes} B "
          f"({record.read_bytes / truth:.2f}×), full read {m1.disks[0].read_bytes} B; full {full_s:.2f} s, "
          f"incremental {inc_s:.2f} s ({inc_s / full_s:.2f}×)")
    assert record.change_method is ChangeMethod.DIRTY_BITMAP and m2.parent == "bm1"
    assert 64 * 4096 <= truth <= record.read_bytes <= 1.5 * truth + 64 * 1024
    out = tmp_path / "vda.raw"
    restore.restore(settings, vm, "bm2", target_name="t", to=[f"vda={out}"])
    assert sha(out) == sha(Path(s2.disks[0].handle))

    # a snapshot taken but never backed up: the next backup crosses it (the two stopped bitmaps merged)
    scatter = ("i=0; while [ $i -lt 16 ]; do dd if=/dev/urandom of=/mnt/vda/base bs=4k count=1 seek=$((i*97+{})) "
               "conv=notrunc 2>/dev/null; i=$((i+1)); done; sync")
    agent.guest_shell(dom, scatter.format(1))
    engine.create(vm, "bm2a", allow_full_copy=True)
    agent.guest_shell(dom, scatter.format(2))
    s2b = engine.create(vm, "bm2b", allow_full_copy=True)
    m2b = backup_snapshot(settings, s2b)
    truth = changed_bytes(Path(s2.disks[0].handle), Path(s2b.disks[0].handle))
    print(f"across an unbacked snapshot: changed {truth} B, read {m2b.disks[0].read_bytes} B")
    assert m2b.disks[0].change_method is ChangeMethod.DIRTY_BITMAP and m2b.parent == "bm2"
    assert 32 * 4096 <= truth <= m2b.disks[0].read_bytes <= 1.5 * truth + 64 * 1024
    assert not any(name.startswith("kvmkit-~") for name in kvmkit_bitmaps(dom, source))  # the union is gone
    restore.restore(settings, vm, "bm2b", target_name="t", to=[f"vda={tmp_path / 'vda2b.raw'}"])
    assert sha(tmp_path / "vda2b.raw") == sha(Path(s2b.disks[0].handle))

    # a VM restart: the raw disk's in-memory bitmaps are gone; the next backup compares hashes, no error
    dom.destroy()
    lab.start_vms(load(lab_state.dir), [vm])
    dom = conn.lookupByName(vm)
    assert kvmkit_bitmaps(dom, source) == {}
    agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/base bs=4k count=8 seek=9 conv=notrunc 2>/dev/null; sync")
    s3 = engine.create(vm, "bm3", allow_full_copy=True)
    assert kvmkit_bitmaps(dom, source) == {"kvmkit-bm3": True}  # no predecessor: the chain restarts here
    m3 = backup_snapshot(settings, s3)
    print(f"after a restart: {m3.disks[0].change_method} read {m3.disks[0].read_bytes} B")
    assert m3.disks[0].change_method is ChangeMethod.HASHES and m3.parent == "bm2b"
    restore.restore(settings, vm, "bm3", target_name="t", to=[f"vda={tmp_path / 'vda3.raw'}"])
    assert sha(tmp_path / "vda3.raw") == sha(Path(s3.disks[0].handle))

    # deleting the snapshots removes their bitmaps, and only kvmkit's
    qmp(dom, "block-dirty-bitmap-add", {"node": bitmaps.node_of(dom, str(source)).node, "name": "operator-own"})
    s4 = engine.create(vm, "bm4", allow_full_copy=True)
    assert kvmkit_bitmaps(dom, source) == {"kvmkit-bm3": False, "kvmkit-bm4/bm3": True}
    for name in ("bm1", "bm2", "bm2a", "bm2b", "bm3", "bm4"):
        engine.delete(vm, name)
    assert kvmkit_bitmaps(dom, source) == {}
    node = bitmaps.node_of(dom, str(source)).node
    names = [b["name"] for n in qmp(dom, "query-named-block-nodes", {"flat": True}) if n["node-name"] == node
             for b in n.get("dirty-bitmaps") or []]
    assert names == ["operator-own"]
    assert s4.disks[0].location["dirty_bitmap"] == "kvmkit-bm4"
    qmp(dom, "block-dirty-bitmap-remove", {"node": node, "name": "operator-own"})


def test_a_qcow2_disk_keeps_its_bitmaps_across_a_vm_restart(bm_vm, lab_state, conn, tmp_path):
    """qcow2 bitmaps are persistent: stored in the image when QEMU ends, loaded when it starts, so an incremental
    after a restart still reads only the guest's writes."""
    vm, raw = bm_vm
    dom = conn.lookupByName(vm)
    dom.destroy()
    source = raw.with_suffix(".qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(source)], check=True)
    xml = dom.XMLDesc(0).replace(str(raw), str(source))
    xml = xml.replace("type='raw'", "type='qcow2'", 1) if "type='raw'" in xml else xml.replace('type="raw"',
                                                                                              'type="qcow2"', 1)
    conn.defineXML(xml)
    raw.unlink()
    lab.start_vms(load(lab_state.dir), [vm])
    dom = conn.lookupByName(vm)
    (tmp_path / "target").mkdir()
    settings = Settings(state_dir=tmp_path / "state", lab_dir=lab_state.dir, libvirt_uri=lab_state.uri,
                        backup_targets=[BackupTarget(name="t", path=tmp_path / "target")])
    engine = Engine(uri=lab_state.uri, state_dir=settings.state_dir, catalog=Catalog(settings.catalog_path))
    q1 = engine.create(vm, "q1", allow_full_copy=True)
    assert q1.disks[0].format == "qcow2" and kvmkit_bitmaps(dom, source) == {"kvmkit-q1": True}
    assert backup_snapshot(settings, q1).disks[0].change_method is ChangeMethod.FULL
    dom.destroy()  # SIGTERM: QEMU closes its images and stores the persistent bitmaps in the qcow2
    info = subprocess.run(["qemu-img", "info", "--output=json", str(source)], capture_output=True, text=True)
    assert "kvmkit-q1" in info.stdout, info.stdout
    lab.start_vms(load(lab_state.dir), [vm])
    dom = conn.lookupByName(vm)
    agent.guest_shell(dom, "i=0; while [ $i -lt 16 ]; do dd if=/dev/urandom of=/mnt/vda/base bs=4k count=1 "
                           "seek=$((i*301)) conv=notrunc 2>/dev/null; i=$((i+1)); done; sync")
    q2 = engine.create(vm, "q2", allow_full_copy=True)
    assert kvmkit_bitmaps(dom, source) == {"kvmkit-q1": False, "kvmkit-q2/q1": True}
    m2 = backup_snapshot(settings, q2)
    record = m2.disks[0]
    print(f"\nqcow2 across a restart: bitmap {record.diff_bytes} B, read {record.read_bytes} B")
    assert record.change_method is ChangeMethod.DIRTY_BITMAP and 16 * 4096 <= record.read_bytes <= 2 * MiB
    out = tmp_path / "vda.raw"
    restore.restore(settings, vm, "q2", target_name="t", to=[f"vda={out}"], fmt="raw")
    guest = subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", q2.disks[0].handle,
                            str(tmp_path / "q2.raw")], capture_output=True)
    assert guest.returncode == 0 and sha(out) == sha(tmp_path / "q2.raw")
    engine.delete(vm, "q1")
    engine.delete(vm, "q2")
    assert kvmkit_bitmaps(dom, source) == {}


def test_a_snapshot_that_died_between_barrier_and_commit_leaves_no_bitmap_once_repaired(bm_vm, lab_state, conn,
                                                                                        tmp_path):
    """kvmkit is killed after the barrier (the bitmap started, the copy made, the overlay not yet committed): its
    watchdog's recover pass merges the overlay back and discards the unfinished snapshot, bitmap included."""
    from kvmkit.virt.connection import live_disks

    vm, _ = bm_vm
    dom = conn.lookupByName(vm)
    source = Path(live_disks(dom)[0].source)  # raw, or qcow2 after the test above
    before = kvmkit_bitmaps(dom, source)
    env = {**os.environ, "KVMKIT_STATE_DIR": str(tmp_path / "state"), "KVMKIT_LAB_DIR": str(lab_state.dir),
           "KVMKIT_FAILPOINT": "overlay-before-commit=hang"}
    proc = subprocess.Popen([sys.executable, "-m", "kvmkit", "snapshot", "create", vm, "--name", "bmkill",
                             "--allow-full-copy"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "failpoint overlay-before-commit: hanging" in line:
                break
        else:
            raise AssertionError(f"kvmkit ended before the failpoint (exit {proc.wait()})")
        assert any(name.startswith("kvmkit-bmkill") for name in kvmkit_bitmaps(dom, source))
    finally:
        proc.kill()
        proc.wait()
    catalog = Catalog(tmp_path / "state" / "catalog.sqlite")
    deadline = time.monotonic() + 60
    while catalog.journal() or catalog.list(dom.UUIDString()):
        assert time.monotonic() < deadline, "the watchdog did not repair within 60 s"
        time.sleep(0.2)
    assert not (source.parent / f"{source.name}@bmkill.kvmkit").exists()
    assert kvmkit_bitmaps(dom, source) == before
