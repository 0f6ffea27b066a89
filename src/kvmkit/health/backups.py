"""Backup records for health: the manifests of every folder target, parsed once per file version.

A manifest carries its chunk lists (megabytes for a large disk), so a scrape must not parse them all each time:
a manifest is re-read only when its (size, mtime) changes, and only a small summary is kept. Nothing is locked —
manifests appear by rename, so a reader sees a whole one or none. S3 targets are not read here (a LIST per scrape
costs money and seconds); `kvmkit backup list` covers them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from kvmkit.backup.model import BackupManifest
from kvmkit.config import BackupTarget

MAX_MANIFEST_BYTES = 512 << 20  # 1 TiB of 1 MiB chunks is ~80 MB of JSON: anything far larger is not a manifest


@dataclass(frozen=True)
class BackupSummary:
    target: str
    vm: str
    vm_uuid: str
    created: datetime  # with a time zone
    written_bytes: int


class ManifestCache:
    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, BackupSummary | None]] = {}  # path → (size, mtime_ns, summary)
        self.malformed = 0

    def summaries(self, targets: list[BackupTarget]) -> list[BackupSummary]:
        found: list[BackupSummary] = []
        live: set[str] = set()
        malformed = 0
        for target in targets:
            if target.kind != "dir" or target.path is None:
                continue
            for path, st in _manifest_files(target.path / "manifests"):
                live.add(path)
                cached = self._seen.get(path)
                if cached is None or cached[:2] != (st.st_size, st.st_mtime_ns):
                    cached = (st.st_size, st.st_mtime_ns, _summary(target.name, path, st.st_size))
                    self._seen[path] = cached
                if cached[2] is None:
                    malformed += 1
                else:
                    found.append(cached[2])
        self._seen = {k: v for k, v in self._seen.items() if k in live}  # bounded by the manifests that exist
        self.malformed = malformed
        return found


def _manifest_files(top: Path):
    if not top.is_dir():
        return
    for folder, _dirs, files in os.walk(top):
        for name in files:
            if not name.endswith(".json"):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield path, st


def _summary(target: str, path: str, size: int) -> BackupSummary | None:
    if size > MAX_MANIFEST_BYTES:
        return None
    try:
        with open(path, "rb") as fh:
            manifest = BackupManifest.model_validate_json(fh.read(MAX_MANIFEST_BYTES + 1))
    except (OSError, ValidationError, ValueError):
        return None
    created = manifest.created if manifest.created.tzinfo else manifest.created.astimezone()
    return BackupSummary(target, manifest.vm, manifest.vm_uuid, created, manifest.written_bytes)
