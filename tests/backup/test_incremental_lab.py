"""A real VM's file disk: an incremental across a VM restart finds the guest's writes by FIEMAP, reads about
what changed, restores byte for byte, and one file comes out of the mounted backup with the guest's sha256."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.backup import restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.model import ChangeMethod
from kvmkit.backup.mount import is_mounted
from kvmkit.config import BackupTarget, Settings
from kvmkit.lab import lab
from kvmkit.lab.state import load
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.engine import Engine
from kvmkit.virt import agent
from tests.backup.conftest import changed_bytes, sha

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def inc_settings(lab_state, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("incremental-lab")
    (root / "target").mkdir()
    return Settings(state_dir=root / "state", lab_dir=lab_state.dir, libvirt_uri=lab_state.uri,
                    backup_targets=[BackupTarget(name="secondary", path=root / "target")])


@pytest.fixture(scope="module")
def inc_vm(lab_state) -> str:
    name = f"{lab_state.dir.name}-bki"
    state = load(lab_state.dir)
    if state.vm(name) is None:
        lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=64)
    return name


def test_incremental_across_a_vm_restart_reads_only_the_guest_writes(inc_settings, inc_vm, lab_state, conn,
                                                                      tmp_path):
    engine = Engine(uri=inc_settings.libvirt_uri, state_dir=inc_settings.state_dir,
                    catalog=Catalog(inc_settings.catalog_path))
    dom = conn.lookupByName(inc_vm)
    agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/base bs=64k count=256 2>/dev/null && sync")
    s1 = engine.create(inc_vm, "inc1")
    m1 = backup_snapshot(inc_settings, s1)
    assert m1.disks[0].change_method is ChangeMethod.FULL
    dom.destroy()  # a VM restart: a new QEMU process, no dirty bitmap could have survived it
    lab.start_vms(load(lab_state.dir), [inc_vm])
    dom = conn.lookupByName(inc_vm)
    guest_sha = agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/base bs=4k seek=100 count=64 conv=notrunc "
                                       "2>/dev/null && dd if=/dev/urandom of=/mnt/vda/new bs=64k count=16 2>/dev/null "
                                       "&& sync && sha256sum /mnt/vda/new").split()[0]
    s2 = engine.create(inc_vm, "inc2")
    m2 = backup_snapshot(inc_settings, s2)
    record = m2.disks[0]
    truth = changed_bytes(Path(s1.disks[0].handle), Path(s2.disks[0].handle))
    print(f"\nVM restart between snapshots: changed {truth} B, read {record.read_bytes} B "
          f"({record.read_bytes / truth:.2f}×), wrote {m2.written_bytes} B, method {record.change_method}")
    assert record.change_method is ChangeMethod.FIEMAP and m2.parent == "inc1"
    assert truth >= 1 << 20 and truth <= record.read_bytes <= 1.5 * truth
    out = tmp_path / "vda.raw"
    restore.restore(inc_settings, inc_vm, "inc2", to=[f"vda={out}"])
    assert sha(out) == sha(Path(s2.disks[0].handle))

    # single-file restore: the backup mounted, its disk loop-mounted, one file read and checked against the guest
    conf = tmp_path / "config.toml"
    conf.write_text(f'state_dir = "{inc_settings.state_dir}"\nlibvirt_uri = "{inc_settings.libvirt_uri}"\n'
                    f'[[backup_targets]]\nname = "secondary"\npath = "{inc_settings.backup_targets[0].path}"\n')
    mnt, inner = tmp_path / "m", tmp_path / "inner"
    mnt.mkdir()
    inner.mkdir()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "kvmkit"), "backup", "mount", inc_vm, "inc2", str(mnt)],
                            env={**os.environ, "KVMKIT_CONFIG": str(conf)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_mounted(mnt), proc.stderr.read() if proc.poll() is not None and proc.stderr else "no mount"
        subprocess.run(["mount", "-o", "ro,loop,noload", str(mnt / "vda.raw"), str(inner)], check=True)
        try:
            assert sha(inner / "new") == guest_sha
        finally:
            subprocess.run(["umount", str(inner)], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        assert proc.wait(timeout=30) == 0
    assert not is_mounted(mnt)
