"""The snapshot catalog: SQLite (WAL, 0600). Rows are written before storage is touched, so every step is
recoverable: a `creating` or `deleting` row whose VM lock is free is an interrupted operation."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from kvmkit import fsat
from kvmkit.errors import Conflict, NotFound
from kvmkit.snapshot.journal import JournalEntry, JournalPayload, dump_payload, parse_entry
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY,
  vm_uuid TEXT NOT NULL,
  vm TEXT NOT NULL,
  name TEXT NOT NULL,
  created TEXT NOT NULL,
  mode TEXT NOT NULL,
  state TEXT NOT NULL,
  freeze_ms REAL,
  pause_ms REAL,
  total_ms REAL,
  storage_ms REAL,
  after_thaw_ms REAL,
  commit_ms REAL,
  error TEXT,
  disks TEXT NOT NULL,
  group_name TEXT,
  freeze_began TEXT,
  thaw_ended TEXT,
  UNIQUE (vm_uuid, name)
);
CREATE TABLE IF NOT EXISTS groups (
  name TEXT PRIMARY KEY,
  vms TEXT NOT NULL,
  updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
  id INTEGER PRIMARY KEY,
  vm_uuid TEXT NOT NULL,
  op TEXT NOT NULL,
  data TEXT NOT NULL,
  created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
PRAGMA user_version = 1;
"""


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        fsat.private_dirs(path.parent)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._migrate()
        self.catalog_id = self._catalog_id()
        for side in ("-wal", "-shm"):
            side_path = Path(f"{path}{side}")
            if side_path.exists():
                os.chmod(side_path, 0o600)

    def _migrate(self) -> None:
        """Columns added after a catalog was first created (SQLite has no IF NOT EXISTS for columns)."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(snapshots)")}
        for column, kind in (("storage_ms", "REAL"), ("after_thaw_ms", "REAL"), ("commit_ms", "REAL"),
                             ("group_name", "TEXT"), ("freeze_began", "TEXT"), ("thaw_ended", "TEXT")):
            if column not in columns:
                self.db.execute(f"ALTER TABLE snapshots ADD COLUMN {column} {kind}")

    def _catalog_id(self) -> str:
        """This catalog's identity, made once: every storage object kvmkit makes carries it (snapshot/ownership),
        so a recover run with another state dir never mistakes this catalog's snapshots for its own orphans."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('catalog_id', ?)", (uuid.uuid4().hex,))
            row = db.execute("SELECT value FROM meta WHERE key = 'catalog_id'").fetchone()
        return str(row[0])

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction at a time on this connection: `snapshot create vm1 vm2` runs creates on threads that
        share the catalog, and SQLite refuses a BEGIN inside another thread's open transaction."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _query(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # snapshots -------------------------------------------------------------------------------------------
    def insert(self, snap: Snapshot) -> Snapshot:
        try:
            with self.tx() as db:
                cur = db.execute(
                    "INSERT INTO snapshots (vm_uuid, vm, name, created, mode, state, freeze_ms, pause_ms, total_ms,"
                    " storage_ms, after_thaw_ms, commit_ms, error, disks, group_name, freeze_began, thaw_ended)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (snap.vm_uuid, snap.vm, snap.name, snap.created.isoformat(), snap.mode.value, snap.state.value,
                     snap.freeze_ms, snap.pause_ms, snap.total_ms, snap.storage_ms, snap.after_thaw_ms, snap.commit_ms,
                     snap.error, _dump_disks(snap.disks), snap.group, _when(snap.freeze_began),
                     _when(snap.thaw_ended)),
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"VM {snap.vm} already has a snapshot named {snap.name!r}") from None
        return snap.model_copy(update={"id": cur.lastrowid})

    def update(self, snap: Snapshot) -> None:
        with self.tx() as db:
            _update_row(db, snap)

    def update_many(self, snaps: list[Snapshot]) -> None:
        """Several rows in one transaction: a group's members become ready together, or none does (recover then
        discards them all, so no half-made group survives)."""
        with self.tx() as db:
            for snap in snaps:
                _update_row(db, snap)

    def remove(self, snap_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM snapshots WHERE id=?", (snap_id,))

    def find(self, vm_uuid: str, name: str) -> Snapshot | None:
        rows = self._query("SELECT * FROM snapshots WHERE vm_uuid=? AND name=?", (vm_uuid, name))
        return _row(rows[0]) if rows else None

    def get(self, vm_uuid: str, name: str, vm_label: str | None = None) -> Snapshot:
        snap = self.find(vm_uuid, name)
        if snap is None:
            raise NotFound(f"VM {vm_label or vm_uuid} has no snapshot named {name!r}")
        return snap

    def list(self, vm_uuid: str | None = None, states: tuple[State, ...] | None = None,
             group: str | None = None) -> list[Snapshot]:
        sql, args = "SELECT * FROM snapshots", []
        where = []
        if vm_uuid:
            where.append("vm_uuid=?")
            args.append(vm_uuid)
        if group:
            where.append("group_name=?")
            args.append(group)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(s.value for s in states)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_row(r) for r in self._query(sql + " ORDER BY created, id", args)]

    # consistency groups: a name → the VMs snapshotted together (group.py) --------------------------------
    def define_group(self, name: str, vms: list[str]) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO groups (name, vms, updated) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET "
                       "vms=excluded.vms, updated=excluded.updated",
                       (name, json.dumps(vms), datetime.now().isoformat()))

    def group_vms(self, name: str) -> list[str] | None:
        """The VMs of a defined group, None if there is no such group (a damaged row reads as no VMs)."""
        rows = self._query("SELECT vms FROM groups WHERE name=?", (name,))
        if not rows:
            return None
        text = str(rows[0]["vms"])
        data = json.loads(text) if len(text) < 1 << 16 else None
        return [v for v in data if isinstance(v, str)][:256] if isinstance(data, list) else []

    def groups(self) -> dict[str, list[str]]:
        return {str(r["name"]): self.group_vms(str(r["name"])) or [] for r in self._query("SELECT name FROM groups")}

    # journal: multi-step operations other than create/delete (revert swaps, overlays) -------------------
    def journal_add(self, vm_uuid: str, payload: JournalPayload) -> int:
        with self.tx() as db:
            cur = db.execute("INSERT INTO journal (vm_uuid, op, data, created) VALUES (?,?,?,?)",
                             (vm_uuid, payload.op, dump_payload(payload), datetime.now().isoformat()))
        return int(cur.lastrowid or 0)

    def journal_update(self, entry_id: int, payload: JournalPayload) -> None:
        with self.tx() as db:
            db.execute("UPDATE journal SET op=?, data=? WHERE id=?", (payload.op, dump_payload(payload), entry_id))

    def journal_update_many(self, updates: list[tuple[int, JournalPayload]]) -> None:
        """Several entries in one transaction: a group revert marks every VM swapped at once, or none."""
        with self.tx() as db:
            for entry_id, payload in updates:
                db.execute("UPDATE journal SET op=?, data=? WHERE id=?", (payload.op, dump_payload(payload), entry_id))

    def journal_done(self, entry_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM journal WHERE id=?", (entry_id,))

    def journal(self, vm_uuid: str | None = None) -> list[JournalEntry]:
        """Open journal entries, oldest first, each parsed strictly (a damaged row says so, and is never guessed)."""
        rows = self._query("SELECT id, vm_uuid, op, data FROM journal ORDER BY id")
        return [parse_entry(int(r["id"]), str(r["vm_uuid"]), str(r["op"]), str(r["data"])) for r in rows
                if vm_uuid is None or r["vm_uuid"] == vm_uuid]


def _update_row(db: sqlite3.Connection, snap: Snapshot) -> None:
    db.execute(
        "UPDATE snapshots SET state=?, freeze_ms=?, pause_ms=?, total_ms=?, storage_ms=?, after_thaw_ms=?,"
        " commit_ms=?, error=?, disks=?, mode=?, group_name=?, freeze_began=?, thaw_ended=? WHERE id=?",
        (snap.state.value, snap.freeze_ms, snap.pause_ms, snap.total_ms, snap.storage_ms, snap.after_thaw_ms,
         snap.commit_ms, snap.error, _dump_disks(snap.disks), snap.mode.value, snap.group,
         _when(snap.freeze_began), _when(snap.thaw_ended), snap.id),
    )


def _dump_disks(disks: list[DiskSnapshot]) -> str:
    return json.dumps([d.model_dump() for d in disks])


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="microseconds")


_OWN_PARSE = ("created", "mode", "state", "disks", "group_name", "freeze_began", "thaw_ended")


def _row(row: sqlite3.Row) -> Snapshot:
    fields = {key: row[key] for key in row.keys() if key not in _OWN_PARSE}  # noqa: SIM118 - sqlite3.Row iterates values
    began, ended = row["freeze_began"], row["thaw_ended"]
    return Snapshot(
        **fields, group=row["group_name"], freeze_began=datetime.fromisoformat(began) if began else None,
        thaw_ended=datetime.fromisoformat(ended) if ended else None,
        created=datetime.fromisoformat(row["created"]), mode=Mode(row["mode"]), state=State(row["state"]),
        disks=[DiskSnapshot.model_validate(d) for d in json.loads(row["disks"])],
    )
