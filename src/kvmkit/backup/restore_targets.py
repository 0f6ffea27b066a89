"""Where a restore may write, and how every disk becomes the new one at once (or none does).

Every destination — given with --to, or the `source` a manifest names (untrusted: a repository can say
anything) — is resolved (realpath, then device and inode) and compared with every disk of every domain libvirt
defines on this host, running or not, live and persistent definitions, backing files included. A match is refused
with one line, unless `--force-offline` and that domain is shut off. Comparing strings is not enough: `$POOL/./vm.raw`
and a symlink name the same inode.

Staging: a regular-file destination is built as `.<name>.kvmkit-restore-<random>` in its own folder (same
filesystem, so rename is atomic), created O_CREAT|O_EXCL|O_NOFOLLOW (a planted symlink is never followed); an RBD
image as `<image>.kvmkit-restore`. Only when every disk was written and verified are they swapped in: each
replaced file is first hard-linked aside, so a failure part-way renames the earlier ones back — all or none — and
no temporary name is left behind. A block device cannot be staged (its node is the disk): it is written in place,
after every staged disk is complete, only with --force, and only if it is at least the disk's size; it is never
replaced by a regular file.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

from kvmkit.backup import restore_guard
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, NotFound, OperationFailed
from kvmkit.failpoint import failpoint
from kvmkit.virt.disks import Disk, parse_disks

log = logging.getLogger(__name__)
Kind = Literal["file", "block", "rbd"]


@dataclass(frozen=True)
class Destination:
    disk: str  # vda …
    given: str  # as the user (or the manifest) said it
    kind: Kind
    path: Path | None = None  # file/block: the resolved path
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) when it exists
    exists: bool = False
    size: int = 0  # block device: its size
    folder: tuple[int, int] | None = None  # file: (st_dev, st_ino) of the folder it was resolved in


@dataclass(frozen=True)
class DomainDisk:
    vm: str
    vm_uuid: str
    shut_off: bool
    target: str
    source: str  # file/device path or pool/image
    rbd: Disk | None = None  # an RBD disk's full record: which cluster, user and secret reach its pool
    format: str | None = None  # the domain's <driver type=…> for this disk: what a restore in place writes


def resolve(disk: str, given: str) -> Destination:
    """The destination as what it really is; a FIFO, folder or socket is refused here."""
    if not given.startswith("/"):
        pool, sep, image = given.partition("/")
        if not sep or not pool or not image or "@" in given or any(c in given for c in "\x00\n"):
            raise InvalidInput(f"restore destination {given!r} for {disk} is neither an absolute path nor "
                               "pool/image")
        return Destination(disk, given, "rbd")
    if "\x00" in given:
        raise InvalidInput(f"restore destination {given!r} for {disk} holds a NUL byte")
    path = Path(os.path.realpath(given))
    try:
        parent = os.stat(path.parent)
        folder = (parent.st_dev, parent.st_ino) if stat.S_ISDIR(parent.st_mode) else None
    except OSError:
        folder = None
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if folder is None:
            raise NotFound(f"folder {path.parent} (for {disk}) does not exist") from None
        return Destination(disk, given, "file", path, folder=folder)
    if stat.S_ISREG(info.st_mode):
        return Destination(disk, given, "file", path, (info.st_dev, info.st_ino), True, folder=folder)
    if stat.S_ISBLK(info.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        return Destination(disk, given, "block", path, (info.st_dev, info.st_ino), True, size)
    raise InvalidInput(f"restore destination {given} for {disk} is not a regular file or a block device")


def domain_disk_sources(xml: str) -> list[tuple[str, str]]:
    """(target, source) of every disk in a domain XML — read-only ones and backing files included (pure)."""
    out = []
    for disk in ET.fromstring(xml).iter("disk"):
        target = disk.find("target")
        dev = target.get("dev", "?") if target is not None else "?"
        for source in disk.iter("source"):
            for attr in ("file", "dev", "name"):
                if source.get(attr):
                    out.append((dev, source.get(attr, "")))
    return out


def defined_disks(uri: str) -> list[DomainDisk]:
    """Every disk of every domain libvirt defines (live and persistent XML). libvirt unreachable: refused (fail
    closed: a restore that cannot see the domains cannot know it is not writing under a running VM)."""
    import libvirt

    from kvmkit.virt.connection import connection

    out: list[DomainDisk] = []
    try:
        with connection(uri) as conn:
            for dom in conn.listAllDomains(0):
                try:
                    state = dom.state()[0]
                    xmls = [dom.XMLDesc(0)]
                    if dom.isPersistent() and dom.isActive():
                        xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # undefined meanwhile: nothing left to protect
                    raise EnvironmentProblem(f"reading domain {dom.name()}: {exc.get_error_message()}") from None
                for xml in xmls:
                    parsed = {(d.target, d.source): d for d in parse_disks(xml)}
                    out += [DomainDisk(dom.name(), dom.UUIDString(), state == libvirt.VIR_DOMAIN_SHUTOFF, t, s,
                                       rbd=d if (d := parsed.get((t, s))) and d.protocol == "rbd" else None,
                                       format=d.format if (d := parsed.get((t, s))) else None)
                            for t, s in domain_disk_sources(xml)]
    except EnvironmentProblem as exc:
        raise EnvironmentProblem(f"libvirt ({uri}) is unreachable ({exc}): a restore cannot check that no VM uses "
                                 "its destination, so it refuses; start libvirtd") from None
    return out


def _same(dest: Destination, source: str) -> bool:
    if dest.kind == "rbd":
        return source == dest.given
    if not source.startswith("/"):
        return False
    if Path(os.path.realpath(source)) == dest.path:
        return True
    try:
        info = os.stat(source)
    except OSError:
        return False
    return dest.identity == (info.st_dev, info.st_ino)


def refuse_domain_disks(dests: list[Destination], disks: list[DomainDisk] | None, force_offline: bool) -> None:
    """One line naming the VM for the first destination that is some domain's disk (pure but for stat)."""
    for dest in dests:
        for disk in disks or []:
            if not _same(dest, disk.source):
                continue
            if force_offline and disk.shut_off:
                log.info("restoring over a shut-off VM's disk", extra={"vm": disk.vm, "disk": disk.target})
                continue
            how = ("it is shut off: pass --force-offline to restore over it" if disk.shut_off
                   else "it is not shut off: shut it down, then pass --force-offline")
            raise Conflict(f"{dest.given} is disk {disk.target} of VM {disk.vm}; {how}")


def require_own_disks(implicit: list[Destination], disks: list[DomainDisk] | None, vm: str, vm_uuid: str) -> None:
    """A destination taken from the manifest (no --to for that disk) must be a disk of the backed-up VM as this
    host defines it now: a tampered manifest's `source` would otherwise make a restore create any file root can
    (a cron job, a profile script). Restoring anywhere else, or onto a host without that VM, takes an explicit
    --to."""
    for dest in implicit:
        if not any(d.vm_uuid == vm_uuid and _same(dest, d.source) for d in disks or []):
            raise InvalidInput(f"backup of VM {vm} says disk {dest.disk} lives at {dest.given}, which is not a disk of "
                               f"VM {vm} ({vm_uuid}) on this host; to restore there, say so: --to "
                               f"{dest.disk}={dest.given}")


@dataclass
class StagedFile:
    """A regular file built beside its destination."""
    dest: Destination
    replace: bool
    size: int
    folder_fd: int = -1
    tmp: str = ""
    fd: int = -1
    aside: str | None = None
    swapped: bool = False

    def open(self) -> int:
        assert self.dest.path is not None
        if self.dest.exists and not self.replace:
            raise Conflict(f"{self.dest.given} exists; pass --force to replace it, or --to another path")
        self.folder_fd = os.open(self.dest.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._still_checked()
        sweep_stale(self.folder_fd, self.dest.path.name)
        self.tmp = f".{self.dest.path.name}.kvmkit-restore-{os.getpid()}-{secrets.token_hex(4)}"
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=self.folder_fd)
        if self.dest.exists:  # keep who may open the disk (libvirt-qemu …)
            old = os.stat(self.dest.path.name, dir_fd=self.folder_fd, follow_symlinks=False)
            with suppress(OSError):
                os.fchown(self.fd, old.st_uid, old.st_gid)
            os.fchmod(self.fd, stat.S_IMODE(old.st_mode))
        os.ftruncate(self.fd, self.size)
        return self.fd

    def _still_checked(self) -> None:
        """From here on everything is done on the opened folder fd: it must be the folder the checks saw, the
        destination in it the very file they saw (or still absent), and no QEMU may hold that file's lock."""
        assert self.dest.path is not None
        info = os.fstat(self.folder_fd)
        if self.dest.folder is not None and (info.st_dev, info.st_ino) != self.dest.folder:
            raise Conflict(f"the folder of {self.dest.given} changed since it was checked; nothing was written")
        name = self.dest.path.name
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.folder_fd)
        except FileNotFoundError:
            if self.dest.exists:
                raise Conflict(f"{self.dest.given} went away since it was checked; nothing was written") from None
            return
        except OSError as exc:
            raise Conflict(f"{self.dest.given} is not the file that was checked ({exc.strerror})") from None
        try:
            now = os.fstat(fd)
            if not self.dest.exists or (now.st_dev, now.st_ino) != self.dest.identity:
                raise Conflict(f"{self.dest.given} changed since it was checked; nothing was written")
            restore_guard.refuse_locked(fd, self.dest.given)
        finally:
            os.close(fd)

    def finish(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def swap(self) -> None:
        """Rename in; an existing destination is hard-linked aside first, so `undo` can put it back."""
        assert self.dest.path is not None
        name = self.dest.path.name
        if self.dest.exists:
            self.aside = f".{name}.kvmkit-old-{os.getpid()}-{secrets.token_hex(4)}"
            os.link(name, self.aside, src_dir_fd=self.folder_fd, dst_dir_fd=self.folder_fd, follow_symlinks=False)
        os.rename(self.tmp, name, src_dir_fd=self.folder_fd, dst_dir_fd=self.folder_fd)
        self.swapped = True

    def undo(self) -> None:
        assert self.dest.path is not None
        name = self.dest.path.name
        if self.aside is not None:
            os.rename(self.aside, name, src_dir_fd=self.folder_fd, dst_dir_fd=self.folder_fd)
            self.aside = None
        elif self.swapped:
            os.unlink(name, dir_fd=self.folder_fd)
        self.swapped = False

    def cleanup(self) -> None:
        """Remove our temporary names (never the destination); close what is open."""
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.folder_fd < 0:
            return
        for name in (self.tmp if not self.swapped else None, self.aside):
            if name:
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self.folder_fd)
        with suppress(OSError):
            os.fsync(self.folder_fd)
        os.close(self.folder_fd)
        self.folder_fd = -1


def sweep_stale(folder_fd: int, name: str) -> list[str]:
    """Remove what a killed restore of `name` left in its folder — ours by name, and only when the process that
    made it is gone: a temp file (never swapped in: the destination is unchanged), or an aside link that is the
    destination itself (killed between link and rename). An aside holding the only copy of a replaced disk (killed
    after its rename, part-way through a multi-disk swap) is kept for the operator, and logged."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.kvmkit-(restore|old)-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    for entry in os.listdir(folder_fd):
        found = pattern.match(entry)
        if not found or _alive(int(found.group(2))):
            continue
        if found.group(1) == "old":
            try:
                aside = os.stat(entry, dir_fd=folder_fd, follow_symlinks=False)
                current = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (aside.st_dev, aside.st_ino) != (current.st_dev, current.st_ino):
                log.warning("a killed restore left the replaced disk aside", extra={"file": entry})
                continue
        with suppress(FileNotFoundError):
            os.unlink(entry, dir_fd=folder_fd)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_block(dest: Destination, replace: bool, size: int) -> int:
    """A block device written in place: only with --force, only if the disk fits."""
    assert dest.path is not None
    if not replace:
        raise Conflict(f"{dest.given} is a block device holding data; pass --force to overwrite it in place "
                       "(it cannot be staged: a failure part-way leaves it partly written)")
    if dest.size < size:
        raise InvalidInput(f"block device {dest.given} has {dest.size} bytes; the backup's disk {dest.disk} needs "
                           f"{size}")
    try:
        fd = os.open(dest.path, os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_EXCL", 0))
    except OSError as exc:
        raise Conflict(f"block device {dest.given} is in use ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != dest.identity:
            raise Conflict(f"block device {dest.given} changed since it was checked; nothing was written")
        restore_guard.refuse_locked(fd, dest.given)
    except BaseException:
        os.close(fd)
        raise
    return fd


def swap_all(staged: list[StagedFile]) -> None:
    """Every staged file renamed in, or — if one rename fails — every earlier one put back."""
    done: list[StagedFile] = []
    try:
        for item in staged:
            item.swap()
            done.append(item)
            failpoint("restore-mid-swap")
    except OSError as exc:
        for item in reversed(done):
            with suppress(OSError):
                item.undo()
        raise OperationFailed(f"could not rename the restored disk into {item.dest.given} ({exc.strerror}); "
                              "every destination was put back as it was") from None
