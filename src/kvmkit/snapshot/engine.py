"""`Engine`: the snapshot context with the operations as methods, for callers that hold one object (backup's CLI
and schedule, benchmarks, lab tests). It adds no field: an Engine *is* a `SnapshotContext` (context.py, the one way
into the core) and is passed wherever a context is taken; each method is the function of its module (create.py,
group.py, lifecycle.py, revert.py). It lives apart from the context because those modules import the context.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmkit.snapshot import create as create_mod
from kvmkit.snapshot import group as group_mod
from kvmkit.snapshot import lifecycle
from kvmkit.snapshot import revert as revert_mod
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.model import Snapshot


@dataclass
class Engine(SnapshotContext):
    def context(self) -> SnapshotContext:
        """Itself (an Engine is a context): for callers that asked the former facade for one."""
        return self

    def create(self, vm: str, name: str | None = None, *, crash_consistent: bool = False, wait_s: float = 0.0,
               allow_full_copy: bool = False) -> Snapshot:
        return create_mod.create(self, vm, name, crash_consistent=crash_consistent, wait_s=wait_s,
                                 allow_full_copy=allow_full_copy)

    def create_group(self, group: str, vms: list[str], name: str | None = None, *, crash_consistent: bool = False,
                     wait_s: float = 0.0, allow_full_copy: bool = False) -> list[Snapshot]:
        return group_mod.create_group(self, group, vms, name, crash_consistent=crash_consistent, wait_s=wait_s,
                                      allow_full_copy=allow_full_copy)

    def discard(self, snap: Snapshot) -> int:
        return lifecycle.discard(self, snap)

    def delete(self, vm: str, name: str, wait_s: float = 0.0) -> Snapshot:
        return lifecycle.delete(self, vm, name, wait_s)

    def revert(self, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
               stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
        return revert_mod.revert(self, vm, name, force_stop=force_stop, wait_s=wait_s,
                                 stop_timeout_s=stop_timeout_s, rollback=rollback)

    def flatten(self, vm: str, wait_s: float = 0.0) -> list[str]:
        return lifecycle.flatten(self, vm, wait_s)

    def list(self, vm: str | None = None) -> list[Snapshot]:
        return lifecycle.list_snapshots(self, vm)
