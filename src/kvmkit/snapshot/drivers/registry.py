"""Which driver serves which disk. A new storage is one module and one line in `default_drivers`."""

from __future__ import annotations

from types import ModuleType

from kvmkit.config import Settings
from kvmkit.errors import InvalidInput
from kvmkit.snapshot.drivers.base import StorageDriver
from kvmkit.snapshot.drivers.file import FileDriver
from kvmkit.virt.disks import Disk


def default_drivers(settings: Settings, *, libvirt_uri: str | None = None, rados: ModuleType | None = None,
                    rbd: ModuleType | None = None) -> list[StorageDriver]:
    """A fresh set of drivers (they hold open images between plan and snapshot: one set per operation).
    libvirt_uri: where the domains' libvirt secrets (cephx keys) are read (None: settings.libvirt_uri).
    rados/rbd: Ceph's binding modules, Debian's by default; without them RBD disks are reported unsupported."""
    from kvmkit.snapshot.drivers.rbd import RbdDriver

    # StorPool first: its devices may be <disk type='file'> too, which the file driver would otherwise claim
    drivers: list[StorageDriver] = _storpool(settings)  # only with the `storpool` binding and StorPool configured
    drivers.append(FileDriver(libvirt_uri or settings.libvirt_uri))
    try:
        drivers.append(RbdDriver(settings.ceph, rados=rados, rbd=rbd,
                                 libvirt_uri=libvirt_uri or settings.libvirt_uri))
    except ImportError:  # python3-rbd absent: RBD disks are then reported as unsupported
        pass
    return drivers


def named_drivers(settings: Settings, names: set[str]) -> list[StorageDriver]:
    """Only the drivers these names call for, for reading snapshots whose records name their driver (backup):
    the StorPool binding's import alone is ~0.2 s, which a backup of file or RBD disks need not pay (it was a
    good part of an unchanged incremental's whole time)."""
    drivers: list[StorageDriver] = _storpool(settings) if "storpool" in names else []
    if "file" in names:
        drivers.append(FileDriver(settings.libvirt_uri))
    if "rbd" in names:
        from kvmkit.snapshot.drivers.rbd import RbdDriver

        try:
            drivers.append(RbdDriver(settings.ceph, libvirt_uri=settings.libvirt_uri))
        except ImportError:  # python3-rbd absent: the backup says so when it needs the driver
            pass
    return drivers


def _storpool(settings: Settings) -> list[StorageDriver]:
    try:
        from kvmkit.snapshot.drivers.storpool import configured_drivers
    except ImportError:  # the optional `storpool` binding is absent
        return []
    return list(configured_drivers(settings))


def driver_for(disk: Disk, drivers: list[StorageDriver]) -> StorageDriver:
    storpool_disk = _storpool_path(disk.source)
    for driver in drivers:
        if storpool_disk and driver.name != "storpool":
            continue  # a StorPool device is never a file kvmkit may reflink or copy
        if driver.claims(disk):
            return driver
    if storpool_disk:
        raise InvalidInput(f"disk {disk.target} ({disk.source}) is a StorPool volume, but StorPool is not "
                           "configured for kvmkit here (no readable /etc/storpool.conf, no [storpool] section, or "
                           "the `storpool` binding is not installed)")
    what = f"{disk.kind}" + (f"/{disk.protocol}" if disk.protocol else "") + f" {disk.format}"
    raise InvalidInput(f"disk {disk.target} ({what} {disk.source}): no kvmkit storage driver serves it "
                       "(kvmkit snapshots raw and qcow2 files, RBD images)")


def _storpool_path(source: str | None) -> bool:
    return bool(source) and (source.startswith(("/dev/storpool/", "/dev/storpool-byid/", "/dev/sp-")))


def by_name(name: str, drivers: list[StorageDriver]) -> StorageDriver:
    for driver in drivers:
        if driver.name == name:
            return driver
    raise InvalidInput(f"no storage driver named {name!r}")
