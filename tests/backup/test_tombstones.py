"""A deleted backup stays deleted: its own validly sealed manifest put back by the storage owner is refused by the
host that deleted it (even with the repository's tombstone removed too) and by any host that saw the tombstone."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from kvmkit.backup import manage, restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.errors import OperationFailed
from tests.backup.conftest import MiB, file_snapshot, later, randbytes, sparse_file
from tests.backup.test_tamper import make_settings, manifest_path, refused, repo


@pytest.mark.parametrize("mode", ["repokey", "none"])
def test_a_deleted_backups_own_manifest_put_back_is_refused(tmp_path, mode):
    settings = make_settings(tmp_path, mode)
    disk = sparse_file(tmp_path / "vda.raw", 6 * MiB, [(i * 2 * MiB, randbytes(MiB)) for i in range(3)])
    first = file_snapshot("s1", {"vda": disk})
    backup_snapshot(settings, first)
    manifest = backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(first)))
    kept = manifest_path(settings, manifest).read_bytes()  # the storage owner keeps a copy
    assert manage.delete(settings, "vm1", "s2").deleted == ["s2"]
    tombs = list((repo(settings) / "tombstones").rglob("*"))
    assert [p.parent.name for p in tombs if p.is_file()] == [manifest.vm_uuid]
    memory = [p for p in (settings.state_dir / "backup-keys" / "tombstones").rglob("*") if p.is_file()]
    assert [p.name for p in memory] == [manifest.vm_uuid] and stat.S_IMODE(memory[0].stat().st_mode) == 0o600

    manifest_path(settings, manifest).write_bytes(kept)  # ... and puts it back
    refused(settings, tmp_path, "s2")
    good, damaged = manage.list_backups(settings, "vm1")
    assert [m.snapshot for m in good] == ["s1"]
    assert [d.problem.split(" (")[0] for d in damaged] == ["a deleted backup put back"]

    shutil.rmtree(repo(settings) / "tombstones")  # the owner removes the tombstone as well: this host remembers
    refused(settings, tmp_path, "s2")
    # a new backup under the same name after the delete is another backup (another fingerprint): accepted
    os.unlink(manifest_path(settings, manifest))
    again = backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(first)))
    assert restore.verify(settings, "vm1", "s2").ok and again.created != manifest.created


def test_another_host_learns_the_tombstone_and_one_that_never_saw_it_is_the_documented_limit(tmp_path):
    settings = make_settings(tmp_path, "repokey")
    disk = sparse_file(tmp_path / "vda.raw", 4 * MiB, [(0, randbytes(MiB))])
    first = file_snapshot("s1", {"vda": disk})
    backup_snapshot(settings, first)
    manifest = backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(first)))
    kept = manifest_path(settings, manifest).read_bytes()
    manage.delete(settings, "vm1", "s2")
    manifest_path(settings, manifest).write_bytes(kept)

    seen = settings.model_copy(update={"state_dir": tmp_path / "host-b"})  # repokey: the passphrase opens it
    with pytest.raises(OperationFailed):
        restore.restore(seen, "vm1", "s2", to=[str(tmp_path / "b.raw")])
    shutil.rmtree(repo(settings) / "tombstones")
    with pytest.raises(OperationFailed):  # host B learnt it from the repository and keeps it
        restore.restore(seen, "vm1", "s2", to=[str(tmp_path / "b.raw")])
    never = settings.model_copy(update={"state_dir": tmp_path / "host-c"})
    assert restore.verify(never, "vm1", "s2").ok  # no tombstone anywhere it can see: docs/backup.md says so
