"""Backup records for health: the manifests of every folder target, parsed once per file version.

A manifest carries its chunk lists (megabytes for a large disk), so a scrape must not parse them all each time:
a manifest is re-read only when its (size, mtime) changes, and only a small summary is kept. Reading is the
store's (backup/store.py): the same checks as every other reader, no second parser to get wrong. Nothing is locked —
manifests appear by rename, so a reader sees a whole one or none. S3 targets are not read here (a LIST per scrape
costs money and seconds); `kvmkit backup list` covers them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime

from kvmkit.backup import keyring
from kvmkit.backup.store import DirTarget, ManifestDamaged
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import KvmkitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupSummary:
    target: str
    vm: str
    vm_uuid: str
    created: datetime  # with a time zone
    written_bytes: int


class ManifestCache:
    """Summaries of every folder target's manifests, read only through the store's own reader (the one backup
    list, verify and restore use): never through a symlinked folder, bounded in size, opened with the
    repository's keys and bound to the name it is read under (VM uuid and snapshot), so a manifest planted or
    moved there cannot pose as a recent backup and silence the backup-age alert."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, BackupSummary | None]] = {}  # key → (size, mtime_ns, summary)
        self.malformed = 0

    def summaries(self, settings: Settings | list[BackupTarget]) -> list[BackupSummary]:
        if isinstance(settings, list):  # callers that pass targets alone: no keys, so only legacy repositories
            settings = Settings(backup_targets=settings)
        found: list[BackupSummary] = []
        live: set[str] = set()
        malformed = 0
        for target in settings.backup_targets:
            if target.kind != "dir" or target.path is None:
                continue
            try:
                bare = DirTarget(target.name, target.path, mark_legacy=False)
                if bare.marker is None:  # not a repository (yet): nothing to count, and nothing is made here
                    continue
                store = keyring.attach(bare, settings, target)
            except (KvmkitError, OSError) as exc:
                log.warning("health: backup target %s is unreadable: %s", target.name, exc)
                malformed += 1
                continue
            for key, size in store._list("manifests/"):
                if not key.endswith(".json") or key.rsplit("/", 1)[-1].startswith("."):
                    continue
                cache_key = f"{target.name}\0{key}"
                live.add(cache_key)
                try:  # a change detector only: the read below goes through the store's reader
                    mtime = os.stat(target.path / key, follow_symlinks=False).st_mtime_ns
                except OSError:
                    continue
                cached = self._seen.get(cache_key)
                if cached is None or cached[:2] != (size, mtime):
                    cached = (size, mtime, _summary(store, key))
                    self._seen[cache_key] = cached
                if cached[2] is None:
                    malformed += 1
                else:
                    found.append(cached[2])
        self._seen = {k: v for k, v in self._seen.items() if k in live}  # bounded by the manifests that exist
        self.malformed = malformed
        return found


def _summary(store: DirTarget, key: str) -> BackupSummary | None:
    try:
        manifest = store._read_manifest(key)
    except ManifestDamaged:
        return None
    if manifest is None:
        return None
    created = manifest.created if manifest.created.tzinfo else manifest.created.astimezone()
    return BackupSummary(store.name, manifest.vm, manifest.vm_uuid, created, manifest.written_bytes)
