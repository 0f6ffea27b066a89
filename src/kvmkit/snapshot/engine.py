"""The former `Engine` facade, folded into `SnapshotContext` (context.py): the context is the one way into the
snapshot core and carries the same methods (create, delete, revert, flatten, list, discard) and the same
constructor fields. This name stays only for callers outside snapshot/ (backup's CLI and schedule, older tests)
until they import SnapshotContext; nothing in snapshot/ uses it."""

from __future__ import annotations

from kvmkit.snapshot.context import SnapshotContext

Engine = SnapshotContext

__all__ = ["Engine"]
