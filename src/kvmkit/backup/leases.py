"""Writer leases: how a backup on one host tells every other host's garbage collection and prune it is running.

    leases/<host>--<pid>--<random>.json   {"host", "pid", "vm_uuid", "snapshot", "parent", "started"}

A backup writes its lease before it looks at a single chunk, rewrites it every REFRESH seconds (the storage's
modification time is the heartbeat) and removes it once its manifest is written. `started` is the lease's own
modification time as the storage reported it after the first write, so every time compared here is the
storage's clock, never a host's. A lease not refreshed for LEASE_TTL (a killed writer, a dead host) is dead:
it never blocks anything forever, and garbage collection removes it.

What a live lease protects (gc.py, manage.py): no chunk modified at or after its `started` is swept, and the
backup it names as `parent` is not deleted or pruned. Hosts are named by KVMKIT_HOST_ID, else the node name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from kvmkit.errors import InvalidInput

ChunkStore = Any  # backup/store.py's ChunkStore (not imported: the store's writers use this module)

log = logging.getLogger(__name__)
PREFIX = "leases/"
LEASE_TTL = 600.0  # seconds without a refresh after which a lease is dead
REFRESH = 60.0
MAX_LEASE = 4096
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def host_id() -> str:
    """This host's name in leases and manifests: KVMKIT_HOST_ID (several writers on one machine acting as
    distinct hosts, or a stable id across renames), else the node name."""
    name = os.environ.get("KVMKIT_HOST_ID") or os.uname().nodename.split(".")[0]
    if not _HOST.match(name):
        raise InvalidInput(f"host id {name!r}: letters, digits, . _ - (at most 63)")
    return name


@dataclass(frozen=True)
class LeaseRecord:
    key: str
    host: str
    vm_uuid: str
    snapshot: str
    parent: str | None
    started: float  # the storage's clock
    refreshed: float  # the storage's clock


def storage_now(store: ChunkStore) -> float:
    """The storage's clock: the modification time of an object written now (then removed)."""
    key = f"{PREFIX}.clock-{host_id()}-{os.getpid()}-{secrets.token_hex(4)}"
    store._put(key, b"{}")
    try:
        when = store._mtime(key)
    finally:
        store._delete([key])
    if when is None:
        raise InvalidInput(f"backup target {store.name}: cannot read the storage's clock")
    return when


class Lease:
    """A running backup's announcement; use as a context manager around everything the backup does."""

    def __init__(self, store: ChunkStore, vm_uuid: str, snapshot: str) -> None:
        self.store, self.vm_uuid, self.snapshot = store, vm_uuid, snapshot
        self.host = host_id()
        self.key = f"{PREFIX}{self.host}--{os.getpid()}--{secrets.token_hex(6)}.json"
        self.parent: str | None = None
        self.started: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        self.store._put(self.key, json.dumps({"host": self.host, "pid": os.getpid(), "vm_uuid": self.vm_uuid,
                                              "snapshot": self.snapshot, "parent": self.parent,
                                              "started": self.started}).encode())

    def __enter__(self) -> Lease:
        self._write()
        self.started = self.store._mtime(self.key)
        if self.started is None:
            raise InvalidInput(f"backup target {self.store.name}: the lease just written is not there")
        self._write()
        self._thread = threading.Thread(target=self._refresh, name="backup-lease", daemon=True)
        self._thread.start()
        return self

    def name_parent(self, parent: str | None) -> None:
        """Say which backup this one builds on (before relying on it): prunes keep it while the lease lives."""
        self.parent = parent
        self._write()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self._write()
            except Exception as exc:  # a transient storage error: the next refresh tries again
                log.warning("lease refresh failed: %s", exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.store._delete([self.key])


def live(store: ChunkStore, now: float) -> list[LeaseRecord]:
    """Leases refreshed within LEASE_TTL of `now` (the storage's clock); unreadable ones count as live from
    their modification time (a damaged lease must not unprotect a running backup)."""
    out = []
    for key, _size, mtime in store._list_times(PREFIX):
        name = key.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.endswith(".json") or now - mtime >= LEASE_TTL:
            continue
        try:
            record = json.loads(store._get(key, MAX_LEASE) or b"null")
        except (OSError, ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            out.append(LeaseRecord(key, "?", "", "", None, mtime, mtime))
            continue
        started = record.get("started")
        parent = record.get("parent")
        out.append(LeaseRecord(key, str(record.get("host", "?"))[:64], str(record.get("vm_uuid", ""))[:64],
                               str(record.get("snapshot", ""))[:128], parent if isinstance(parent, str) else None,
                               min(float(started), mtime) if isinstance(started, int | float) else mtime, mtime))
    return out


def dead(store: ChunkStore, now: float) -> list[str]:
    """Keys of leases dead for twice their TTL: removed by garbage collection."""
    return [key for key, _size, mtime in store._list_times(PREFIX) if now - mtime >= 2 * LEASE_TTL]
