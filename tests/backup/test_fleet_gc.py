"""One repository, many hosts (issue 23 item 3): garbage collection never sweeps what a running backup wrote or
relies on, nor a chunk younger than its margin; a prune keeps the parent a running backup names."""

from __future__ import annotations

import os
import time

from kvmkit.backup import gc, leases, manage
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.retention import RetentionPolicy
from kvmkit.backup.store import chunk_key
from kvmkit.backup.targets import open_target
from tests.backup.conftest import MiB, file_snapshot, later, randbytes, sparse_file


def orphan(store, age_s: float) -> str:
    """An unreferenced chunk (as a killed backup leaves), its modification time age_s in the past."""
    digest = os.urandom(32).hex()
    store._put(chunk_key(digest), b"KVB1\0orphan")
    path = store.root / chunk_key(digest)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return digest


def test_the_sweep_respects_the_margin_and_the_oldest_live_lease(tmp_path, settings):
    store = open_target(settings)
    store.gc_margin = 3600
    young, old = orphan(store, 60), orphan(store, 7200)
    assert gc.collect(store) == (1, len(b"KVB1\0orphan"))
    assert store.has_chunk(young) and not store.has_chunk(old)
    store.gc_margin = 0
    with leases.Lease(store, "00000000-0000-4000-8000-000000000001", "s1") as lease:
        during = orphan(store, 0)  # written by the running backup, after its lease began
        before = orphan(store, 7200)
        assert lease.started is not None
        assert gc.collect(store)[0] == 2  # `young` and `before`: older than the lease
        assert store.has_chunk(during) and not store.has_chunk(before)
    assert gc.collect(store)[0] == 1 and not store.has_chunk(during)  # lease gone: swept


def test_a_reused_chunk_is_touched_so_a_concurrent_sweep_keeps_it(tmp_path, settings):
    store = open_target(settings)
    digest = orphan(store, 7200)
    old = os.stat(store.root / chunk_key(digest)).st_mtime
    store.reused = set()
    assert store.reuse(digest) and digest in store.reused
    assert os.stat(store.root / chunk_key(digest)).st_mtime > old + 3600
    store.gc_margin = 600
    assert gc.collect(store)[0] == 0 and store.has_chunk(digest)
    assert store.missing_reused() == []


def test_a_prune_keeps_the_parent_a_running_backup_names(tmp_path, settings):
    disk = sparse_file(tmp_path / "vda.raw", 4 * MiB, [(0, randbytes(MiB))])
    s1 = file_snapshot("s1", {"vda": disk})
    first = backup_snapshot(settings, s1)
    backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(s1)))
    store = open_target(settings)
    with leases.Lease(store, first.vm_uuid, "s3") as lease:
        lease.name_parent("s1")
        removal = manage.prune(settings, "vm1", RetentionPolicy(keep_last=1))
        assert removal.deleted == [] and "running on" in removal.kept["s1"]
    assert manage.prune(settings, "vm1", RetentionPolicy(keep_last=1)).deleted == ["s1"]


def test_manifests_and_leases_name_their_host(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("KVMKIT_HOST_ID", "hv-07")
    disk = sparse_file(tmp_path / "vda.raw", 2 * MiB, [(0, randbytes(MiB))])
    assert backup_snapshot(settings, file_snapshot("s1", {"vda": disk})).host == "hv-07"
    store = open_target(settings)
    with leases.Lease(store, "00000000-0000-4000-8000-000000000001", "s9"):
        [record] = leases.live(store, leases.storage_now(store))
        assert record.host == "hv-07" and record.key.startswith("leases/hv-07--")


def test_delete_refuses_a_running_backups_parent_before_removing_anything(tmp_path, settings):
    import pytest

    from kvmkit.errors import Conflict

    disk = sparse_file(tmp_path / "vda.raw", 4 * MiB, [(0, randbytes(MiB))])
    s1 = file_snapshot("s1", {"vda": disk})
    first = backup_snapshot(settings, s1)
    backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(s1)))
    store = open_target(settings)
    with leases.Lease(store, first.vm_uuid, "s3") as lease:
        lease.name_parent("s2")
        with pytest.raises(Conflict, match="parent of a backup running on"):
            manage.delete(settings, "vm1", "s1", with_dependants=True)
        assert [m.snapshot for m in manage.list_backups(settings)[0]] == ["s1", "s2"]
    assert manage.delete(settings, "vm1", "s1", with_dependants=True).deleted == ["s2", "s1"]
