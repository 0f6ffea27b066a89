"""What a snapshot operation depends on, passed in rather than looked up: the one way into the snapshot core.

Every operation is a function of its module taking the context first — create.py, group.py (several VMs as one
instant), group_ops.py, lifecycle.py (delete, flatten, list, discard), revert.py, recover.py — and the context
offers the same operations as methods for callers that hold one object (CLIs, benchmarks, lab tests).

Production builds it from the settings (`SnapshotContext.from_settings`, or `from_config` to load them); a test
builds it around libvirt's in-memory `test:///default` driver, an in-memory storage driver, an in-process
watchdog and a fixed clock, so the engine's state machine runs without a lab in milliseconds. Built with only
uri, state_dir and catalog, it gets the configured drivers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from kvmkit import config
from kvmkit.config import Settings
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.base import StorageDriver
from kvmkit.snapshot.guard import Watchdog, WatchdogFactory
from kvmkit.virt.agent import QemuGuestAgent
from kvmkit.virt.connection import Domain

if TYPE_CHECKING:
    from kvmkit.snapshot.model import Snapshot


class GuestAgent(Protocol):
    """What the engine asks of the guest agent (virt.agent.QemuGuestAgent in production)."""

    def ping(self, dom: Domain, timeout_s: int = 2) -> bool: ...

    def freeze(self, dom: Domain) -> int: ...

    def thaw(self, dom: Domain) -> int: ...

    def freeze_status(self, dom: Domain) -> str: ...


def _configured_drivers() -> list[StorageDriver]:
    from kvmkit.snapshot.drivers.registry import default_drivers

    return default_drivers(config.load())


@dataclass(frozen=True)
class SnapshotContext:
    uri: str  # libvirt URI
    state_dir: Path  # locks and logs
    catalog: Catalog
    # one set per operation: drivers hold images open between plan and snapshot (default: the configured ones)
    drivers: list[StorageDriver] = field(default_factory=_configured_drivers)
    new_drivers: Callable[[], list[StorageDriver]] | None = None  # a fresh set, for operations side by side
    watchdog: WatchdogFactory = Watchdog  # the thaw watchdog: a separate process in production
    guest: GuestAgent = field(default_factory=QemuGuestAgent)
    clock: Callable[[], datetime] = datetime.now  # row timestamps and default snapshot names
    freeze_timeout_s: float = 10.0
    extent_limit: int = 2048  # file disks with more extents get the O(1) overlay barrier instead (see overlay.py)
    overlay_barrier: Literal["qmp", "libvirt"] = "qmp"
    sequential: bool = False  # benchmarks only: snapshot disks one after another, to show what concurrency buys
    settings: Settings | None = None  # where fresh drivers get their Ceph settings (None: load the config)

    @classmethod
    def from_settings(cls, settings: Settings, uri: str | None = None) -> SnapshotContext:
        from kvmkit.snapshot.drivers.registry import default_drivers

        uri = uri or settings.libvirt_uri

        def new_drivers() -> list[StorageDriver]:
            return default_drivers(settings, libvirt_uri=uri)

        return cls(uri=uri, state_dir=settings.state_dir,
                   catalog=Catalog(settings.catalog_path), drivers=new_drivers(), new_drivers=new_drivers,
                   freeze_timeout_s=settings.freeze_timeout_s, extent_limit=settings.reflink_extent_limit,
                   overlay_barrier=settings.overlay_barrier, settings=settings)

    @classmethod
    def from_config(cls, uri: str | None = None) -> SnapshotContext:
        """from_settings with the settings loaded from the configuration (files and KVMKIT_* environment)."""
        return cls.from_settings(config.load(), uri)

    def make_drivers(self) -> list[StorageDriver]:
        """A fresh set of drivers for this context's libvirt URI."""
        if self.new_drivers is not None:
            return self.new_drivers()
        from kvmkit.snapshot.drivers.registry import default_drivers

        return default_drivers(self.settings or config.load(), libvirt_uri=self.uri)

    def fresh(self) -> SnapshotContext:
        """The same context with its own drivers, for one of several operations running concurrently."""
        return dataclasses.replace(self, drivers=self.make_drivers())

    def context(self) -> SnapshotContext:
        """Itself: for callers written against the former `Engine` facade, which built a context per call."""
        return self

    # the operations, as methods (each is the function of its module) -------------------------------------
    def create(self, vm: str, name: str | None = None, *, crash_consistent: bool = False, wait_s: float = 0.0,
               allow_full_copy: bool = False) -> Snapshot:
        from kvmkit.snapshot.create import create

        return create(self, vm, name, crash_consistent=crash_consistent, wait_s=wait_s,
                      allow_full_copy=allow_full_copy)

    def create_group(self, group: str, vms: list[str], name: str | None = None, *, crash_consistent: bool = False,
                     wait_s: float = 0.0, allow_full_copy: bool = False) -> list[Snapshot]:
        from kvmkit.snapshot.group import create_group

        return create_group(self, group, vms, name, crash_consistent=crash_consistent, wait_s=wait_s,
                            allow_full_copy=allow_full_copy)

    def discard(self, snap: Snapshot) -> int:
        from kvmkit.snapshot.lifecycle import discard

        return discard(self, snap)

    def delete(self, vm: str, name: str, wait_s: float = 0.0) -> Snapshot:
        from kvmkit.snapshot.lifecycle import delete

        return delete(self, vm, name, wait_s)

    def revert(self, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
               stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
        from kvmkit.snapshot.revert import revert

        return revert(self, vm, name, force_stop=force_stop, wait_s=wait_s, stop_timeout_s=stop_timeout_s,
                      rollback=rollback)

    def flatten(self, vm: str, wait_s: float = 0.0) -> list[str]:
        from kvmkit.snapshot.lifecycle import flatten

        return flatten(self, vm, wait_s)

    def list(self, vm: str | None = None) -> list[Snapshot]:
        from kvmkit.snapshot.lifecycle import list_snapshots

        return list_snapshots(self, vm)
