"""`Engine`: a thin facade over the snapshot operations for callers that hold one object (the CLI of backup and
schedule, benchmarks, lab tests). Each call builds a `SnapshotContext` from the fields and runs the function of
its module: create.py, lifecycle.py (delete, flatten, list, discard), revert.py; recover.py takes a context too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kvmkit import config
from kvmkit.snapshot import create as create_mod
from kvmkit.snapshot import lifecycle
from kvmkit.snapshot import revert as revert_mod
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.context import GuestAgent, SnapshotContext
from kvmkit.snapshot.drivers.base import StorageDriver
from kvmkit.snapshot.drivers.registry import default_drivers
from kvmkit.snapshot.guard import Watchdog, WatchdogFactory
from kvmkit.snapshot.model import Snapshot
from kvmkit.virt.agent import QemuGuestAgent


def _configured_drivers() -> list[StorageDriver]:
    return default_drivers(config.load())


@dataclass
class Engine:
    uri: str
    state_dir: Path
    catalog: Catalog
    freeze_timeout_s: float = 10.0
    drivers: list[StorageDriver] = field(default_factory=_configured_drivers)
    sequential: bool = False  # benchmarks only: snapshot disks one after another, to show what concurrency buys
    extent_limit: int = 2048  # file disks with more extents get the O(1) overlay barrier instead (see overlay.py)
    overlay_barrier: Literal["qmp", "libvirt"] = "qmp"  # pre-opened overlay node + one QMP transaction; or libvirt
    settings: config.Settings | None = None  # where fresh drivers get their Ceph settings (None: load the config)
    watchdog: WatchdogFactory = Watchdog  # a test passes an in-process double
    guest: GuestAgent = field(default_factory=QemuGuestAgent)

    @classmethod
    def from_config(cls, uri: str | None = None) -> Engine:
        settings = config.load()
        uri = uri or settings.libvirt_uri
        return cls(uri=uri, state_dir=settings.state_dir,
                   catalog=Catalog(settings.catalog_path), freeze_timeout_s=settings.freeze_timeout_s,
                   drivers=default_drivers(settings, libvirt_uri=uri), extent_limit=settings.reflink_extent_limit,
                   overlay_barrier=settings.overlay_barrier, settings=settings)

    def context(self) -> SnapshotContext:
        settings = self.settings

        def new_drivers() -> list[StorageDriver]:
            return default_drivers(settings or config.load(), libvirt_uri=self.uri)

        return SnapshotContext(uri=self.uri, state_dir=self.state_dir, catalog=self.catalog, drivers=self.drivers,
                               new_drivers=new_drivers, watchdog=self.watchdog, guest=self.guest,
                               freeze_timeout_s=self.freeze_timeout_s,
                               extent_limit=self.extent_limit, overlay_barrier=self.overlay_barrier,
                               sequential=self.sequential)

    def create(self, vm: str, name: str | None = None, *, crash_consistent: bool = False,
               wait_s: float = 0.0, allow_full_copy: bool = False) -> Snapshot:
        return create_mod.create(self.context(), vm, name, crash_consistent=crash_consistent, wait_s=wait_s,
                                 allow_full_copy=allow_full_copy)

    def discard(self, snap: Snapshot) -> int:
        return lifecycle.discard(self.context(), snap)

    def delete(self, vm: str, name: str, wait_s: float = 0.0) -> Snapshot:
        return lifecycle.delete(self.context(), vm, name, wait_s)

    def revert(self, vm: str, name: str, *, force_stop: bool = False, wait_s: float = 0.0,
               stop_timeout_s: float = 10.0, rollback: bool = False) -> Snapshot:
        return revert_mod.revert(self.context(), vm, name, force_stop=force_stop, wait_s=wait_s,
                                 stop_timeout_s=stop_timeout_s, rollback=rollback)

    def flatten(self, vm: str, wait_s: float = 0.0) -> list[str]:
        return lifecycle.flatten(self.context(), vm, wait_s)

    def list(self, vm: str | None = None) -> list[Snapshot]:
        return lifecycle.list_snapshots(self.context(), vm)
