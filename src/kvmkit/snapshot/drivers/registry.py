"""Which driver serves which disk. A new storage is one module and one line here."""

from __future__ import annotations

from kvmkit.errors import InvalidInput
from kvmkit.snapshot.drivers.base import StorageDriver
from kvmkit.snapshot.drivers.file import FileDriver
from kvmkit.virt.disks import Disk


def default_drivers(libvirt_uri: str | None = None) -> list[StorageDriver]:
    """libvirt_uri: where the domains' libvirt secrets (cephx keys) are read; None: the configured URI."""
    drivers: list[StorageDriver] = [FileDriver()]
    drivers += _storpool()  # only when the `storpool` binding is installed and StorPool is configured here
    try:
        from kvmkit.snapshot.drivers.rbd import RbdDriver
    except ImportError:  # python3-rbd absent: RBD disks are then reported as unsupported
        return drivers
    drivers.append(RbdDriver(libvirt_uri=libvirt_uri))
    return drivers


def _storpool() -> list[StorageDriver]:
    try:
        from kvmkit.snapshot.drivers.storpool import configured_drivers
    except ImportError:  # the optional `storpool` binding is absent
        return []
    return list(configured_drivers())


def driver_for(disk: Disk, drivers: list[StorageDriver]) -> StorageDriver:
    for driver in drivers:
        if driver.claims(disk):
            return driver
    what = f"{disk.kind}" + (f"/{disk.protocol}" if disk.protocol else "") + f" {disk.format}"
    raise InvalidInput(f"disk {disk.target} ({what} {disk.source}): no kvmkit storage driver serves it "
                       "(kvmkit snapshots raw and qcow2 files, RBD images)")


def by_name(name: str, drivers: list[StorageDriver]) -> StorageDriver:
    for driver in drivers:
        if driver.name == name:
            return driver
    raise InvalidInput(f"no storage driver named {name!r}")
