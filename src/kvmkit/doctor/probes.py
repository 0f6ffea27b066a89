"""The effectful edge of `kvmkit doctor`: each probe looks at one thing and returns plain observations or a finding
built by checks.py. Probes only read, except the two that must write to answer (a FICLONE probe file in a pool
folder, a probe file on a backup target), which remove what they wrote."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kvmkit.config import BackupTarget, Settings
from kvmkit.doctor import checks
from kvmkit.doctor.checks import DiskExtents, PathMode, TargetSpace
from kvmkit.doctor.model import Finding
from kvmkit.errors import KvmkitError
from kvmkit.virt.disks import Disk


def preload(rbd: bool) -> None:
    """Import what the probes use, once, in the calling thread, before any probe runs in the pool: two threads
    importing modules of one package at once can deadlock on Python's per-module import locks (CI saw
    `deadlock detected by _ModuleLock('kvmkit.snapshot.drivers.file.overlay')` and doctor exit 70)."""
    import kvmkit.snapshot.drivers.file
    import kvmkit.snapshot.drivers.file.overlay

    if rbd:
        try:
            import kvmkit.snapshot.drivers.rbd  # noqa: F401
        except ImportError:
            pass  # no Debian rbd/rados bindings: the probe itself reports it


def reflink(pool: Path, vms: list[str]) -> Finding:
    from kvmkit.snapshot.drivers.file import supports_reflink

    try:
        return checks.reflink_finding(pool, vms, supports_reflink(pool))
    except OSError as exc:
        return checks.reflink_finding(pool, vms, None, f"probe failed: {exc.strerror or exc}")


def extents(disks: Iterable[tuple[str, Disk]], limit: int) -> list[DiskExtents]:
    from kvmkit.snapshot.drivers.file.overlay import extent_count

    counted = []
    for vm, disk in disks:
        try:
            counted.append(DiskExtents(vm, disk.target, extent_count(Path(disk.source), limit)))
        except OSError:
            continue  # unreadable here: the reflink and snapshot checks say why
    return counted


def rbd_cluster(settings: Settings, disks: list[tuple[str, Disk]]) -> Finding:
    """Open each image the way a snapshot does (the domain's monitors, conf and client id) and list its snapshots."""
    from kvmkit.snapshot.drivers.rbd import RbdDriver

    first = disks[0][1]
    label = ",".join(f"{h}:{p}" for h, p in first.hosts) or first.config_file or "default ceph.conf"
    label += f" as client.{first.auth_username or settings.ceph.client_id}"
    driver = RbdDriver(settings.ceph)
    error = ""
    try:
        for _vm, disk in disks:
            driver.owned(disk)
    except KvmkitError as exc:
        error = str(exc)
    except Exception as exc:  # librbd's own errors (permission, timeout) are what this probe is for
        error = f"{type(exc).__name__}: {exc}"
    finally:
        driver.release()
    return checks.rbd_finding(label, sorted({vm for vm, _ in disks}), error)


def backup_target(target: BackupTarget) -> Finding:
    if target.kind != "dir" or target.path is None:
        return checks.backup_target_finding(target.name, target.endpoint or target.kind, None)
    path = target.path
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kvmkit-doctor-") as probe:
            probe.write(b"kvmkit")
            probe.flush()
        vfs = os.statvfs(path)
        space = TargetSpace(True, free_bytes=vfs.f_bavail * vfs.f_frsize, total_bytes=vfs.f_blocks * vfs.f_frsize)
    except OSError as exc:
        space = TargetSpace(False, error=exc.strerror or str(exc))
    return checks.backup_target_finding(target.name, str(path), space)


def path_mode(path: Path) -> PathMode:
    try:
        st = path.stat()
    except OSError:
        return PathMode(exists=False)
    return PathMode(exists=True, is_dir=path.is_dir(), mode=st.st_mode & 0o7777, uid=st.st_uid)


def state_dir(settings: Settings) -> list[Finding]:
    catalog = settings.catalog_path
    return checks.state_dir_findings(settings.state_dir, path_mode(settings.state_dir), catalog, path_mode(catalog),
                                     os.geteuid())
