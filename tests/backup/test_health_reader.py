"""The health exporter reads backups only through the store's reader (issue 23): a symlinked manifests folder,
a manifest moved under another VM or snapshot, or an unsealed one planted in a keyed repository is never counted
as a backup (each would silence the backup-age alert)."""

from __future__ import annotations

import json
import shutil

from kvmkit.backup.create import backup_snapshot
from kvmkit.health.backups import ManifestCache
from tests.backup.conftest import MiB, file_snapshot, randbytes, sparse_file
from tests.backup.test_tamper import make_settings


def test_only_manifests_the_store_accepts_are_counted(tmp_path):
    settings = make_settings(tmp_path, "none")
    disk = sparse_file(tmp_path / "vda.raw", 2 * MiB, [(0, randbytes(MiB))])
    manifest = backup_snapshot(settings, file_snapshot("s1", {"vda": disk}))
    cache = ManifestCache()
    assert [(s.vm, s.vm_uuid) for s in cache.summaries(settings)] == [("vm1", manifest.vm_uuid)]
    assert cache.malformed == 0
    repo = settings.backup_targets[0].path
    assert repo is not None
    folder = repo / "manifests" / manifest.vm_uuid
    # moved under another VM: the seal binds it to its own name
    other = repo / "manifests" / "00000000-0000-4000-8000-000000000002"
    other.mkdir()
    shutil.copy(folder / "s1.json", other / "s1.json")
    # a plain manifest claiming a 2030 backup, planted in a repository whose manifests carry a MAC
    plain = json.loads((folder / "s1.json").read_bytes()[38:])
    plain.update(snapshot="s9", created="2030-01-01T00:00:00")
    (folder / "s9.json").write_text(json.dumps(plain))
    summaries = cache.summaries(settings)
    assert [s.vm_uuid for s in summaries] == [manifest.vm_uuid] and cache.malformed == 2
    # the manifests folder replaced by a symlink to a folder outside the repository: not followed
    outside = tmp_path / "outside"
    shutil.move(str(repo / "manifests"), outside)
    (repo / "manifests").symlink_to(outside)
    assert cache.summaries(settings) == [] and cache.malformed == 0
