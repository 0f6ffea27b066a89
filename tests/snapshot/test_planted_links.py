"""Root-run file operations in a pool folder others can write (an NFS export shared by hypervisors): a symlink
planted at a name kvmkit uses must never make root write, clone into, chown or chmod the file it points to."""

from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path

import pytest

from kvmkit.errors import OperationFailed
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.file import FileDriver
from kvmkit.snapshot.journal import FileStaging
from kvmkit.virt.disks import Disk

pytestmark = pytest.mark.lab
# the module, not the function of the same name the file driver package exports
reflink_mod = importlib.import_module("kvmkit.snapshot.drivers.file.reflink")
VICTIM = b"host file, not kvmkit's\n"


@pytest.fixture()
def pool_dir(lab_state):
    assert lab_state.pool is not None and lab_state.pool.kind == "xfs"
    where = lab_state.pool.path / f"planted-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    yield where
    for p in where.iterdir():
        p.unlink()
    where.rmdir()


@pytest.fixture()
def victim(tmp_path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    path.chmod(0o644)
    return path


def test_the_reflink_probe_never_writes_through_a_planted_link(pool_dir, victim, monkeypatch):
    for name in (f".kvmkit-probe-{os.getpid()}", f".kvmkit-probe-{os.getpid()}.clone"):  # the names it once used
        (pool_dir / name).symlink_to(victim)
    monkeypatch.setattr(reflink_mod, "_reflink_ok", {})
    assert reflink_mod.supports_reflink(pool_dir) is True
    assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in pool_dir.iterdir()) == sorted(
        [f".kvmkit-probe-{os.getpid()}", f".kvmkit-probe-{os.getpid()}.clone"])  # planted stay, ours are gone


def test_the_reflink_probe_refuses_a_folder_that_is_a_symlink(pool_dir, tmp_path, monkeypatch):
    link = pool_dir / "elsewhere"
    link.symlink_to(tmp_path)
    monkeypatch.setattr(reflink_mod, "_reflink_ok", {})
    with pytest.raises(OSError):
        reflink_mod.supports_reflink(link)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kvmkit-probe")]


def _disk_with_snapshot(pool_dir: Path) -> tuple[Disk, object]:
    disk_path = pool_dir / "d.raw"
    disk_path.write_bytes(b"A" * 4096)
    disk_path.chmod(0o640)
    os.chown(disk_path, 12345, 0)  # the qemu user's file, say: the clone must take its owner
    disk = Disk(target="vdx", kind="file", format="raw", source=str(disk_path))
    driver = FileDriver()
    snap = driver.snapshot(driver.plan(disk, "kvmkit-s1", PlanOptions()))
    driver.release()
    disk_path.write_bytes(b"B" * 4096)
    return disk, snap


def test_stage_revert_removes_a_planted_link_and_chowns_only_its_own_clone(pool_dir, victim):
    disk, snap = _disk_with_snapshot(pool_dir)
    planted = Path(f"{disk.source}.kvmkit-new")
    planted.symlink_to(victim)
    driver = FileDriver()
    staged = driver.stage_revert(disk, snap, RevertOptions())
    assert victim.read_bytes() == VICTIM and victim.stat().st_mode & 0o777 == 0o644 and victim.stat().st_uid == 0
    new = os.lstat(planted)
    disk_st = os.stat(disk.source)
    assert new.st_mode & 0o777 == 0o640 and (new.st_uid, new.st_gid) == (disk_st.st_uid, disk_st.st_gid)
    assert planted.read_bytes() == b"A" * 4096
    driver.swap(staged)
    driver.commit(staged)
    assert Path(disk.source).read_bytes() == b"A" * 4096
    assert not planted.exists() and not Path(f"{disk.source}.kvmkit-old").exists()


def test_stage_revert_refuses_a_snapshot_handle_that_is_not_a_regular_file(pool_dir, victim):
    disk, snap = _disk_with_snapshot(pool_dir)
    handle = Path(snap.handle)
    handle.unlink()
    os.mkfifo(handle)  # a FIFO would block an open without O_NONBLOCK forever
    with pytest.raises(OperationFailed, match="not a regular file"):
        FileDriver().stage_revert(disk, snap, RevertOptions())
    assert not Path(f"{disk.source}.kvmkit-new").exists()


def test_a_revert_journal_naming_other_files_is_refused(pool_dir, victim):
    disk, _ = _disk_with_snapshot(pool_dir)
    forged = StagedRevert(target="vdx", driver="file",
                          data=FileStaging(source=disk.source, new=str(victim), old=f"{disk.source}.x"))
    for step in (FileDriver().swap, FileDriver().undo, FileDriver().commit):
        with pytest.raises(OperationFailed, match="refused"):
            step(forged)
    assert victim.read_bytes() == VICTIM
