"""What a snapshot operation depends on, passed in rather than looked up: the one way into the snapshot core.

Every operation is a function of its module taking the context first — create.py, group.py (several VMs as one
instant), group_ops.py, lifecycle.py (delete, flatten, list, discard), revert.py, recover.py. (engine.py's
`Engine` is this same context with those functions as methods, for callers that hold one object.)

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
from typing import Literal, Protocol

from kvmkit import config
from kvmkit.config import Settings
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.base import StorageDriver
from kvmkit.snapshot.guard import Watchdog, WatchdogFactory
from kvmkit.virt.agent import QemuGuestAgent
from kvmkit.virt.connection import Domain


class GuestAgent(Protocol):
    """What the engine asks of the guest agent (virt.agent.QemuGuestAgent in production)."""

    def ping(self, dom: Domain, timeout_s: int = 2) -> bool: ...

    def freeze(self, dom: Domain) -> int: ...

    def thaw(self, dom: Domain) -> int: ...

    def freeze_status(self, dom: Domain) -> str: ...


def _configured_drivers() -> list[StorageDriver]:
    from kvmkit.snapshot.drivers.registry import default_drivers

    return default_drivers(config.load())


@dataclass  # not frozen: a bench or lab test tunes one field (extent_limit, sequential) between runs
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
