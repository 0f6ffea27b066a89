"""Which StorPool volume a libvirt disk is: the links a StorPool client host has (`/dev/storpool/<name>` for named
volumes, `/dev/storpool-byid/<globalId>` for all, leading to a `/dev/sp-N` node; `spapi.SP_DEV_PATH`, and CloudStack's
StorPoolStorageAdaptor, which attaches unnamed volumes by globalId), looked up through the API and checked against
the disk's device so a stale or hand-made link is refused rather than snapshotted."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmkit.errors import Conflict, NotFound
from kvmkit.virt.disks import Disk

DEV_BY_NAME = Path("/dev/storpool")
DEV_BY_ID = Path("/dev/storpool-byid")
LINK_DIRS = (DEV_BY_NAME, DEV_BY_ID)


@dataclass(frozen=True)
class Volume:
    name: str  # "" for an unnamed volume
    global_id: str
    size: int

    @property
    def ref(self) -> str:
        """How the API addresses it (a globalId reference works for named volumes too)."""
        return "~" + self.global_id

    @property
    def label(self) -> str:
        """For messages and snapshot names: the name, or the globalId of an unnamed volume."""
        return self.name or self.global_id


def is_storpool_path(source: str) -> bool:
    """A StorPool client's device node or link, whatever kind of disk libvirt calls it."""
    path = Path(source)
    return path.parent in LINK_DIRS or (path.name.startswith("sp-") and path.parent == Path("/dev"))


def lookup(call: Callable[..., Any], disk: Disk) -> Volume:
    """The volume behind a disk, from the API (by name, or `~globalId`); its links must lead to the disk's device."""
    source = Path(disk.source)
    if source.parent == DEV_BY_ID:
        ref = "~" + source.name
    elif source.parent == DEV_BY_NAME:
        ref = source.name
    else:  # a device node: find the volume link that resolves to it
        real = os.path.realpath(source)
        link = next((lk for d in LINK_DIRS for lk in _links(d) if os.path.realpath(lk) == real), None)
        if link is None:
            raise NotFound(f"disk {disk.target}: {disk.source} is no attached StorPool volume "
                           f"(no link in {DEV_BY_NAME} or {DEV_BY_ID} resolves to it)")
        ref = ("~" if link.parent == DEV_BY_ID else "") + link.name
    found = call(f"disk {disk.target}: looking up StorPool volume {ref}", "volumeList", ref)
    if not found:
        raise NotFound(f"disk {disk.target}: StorPool volume {ref} does not exist")
    name = "" if found[0].name.startswith("~") else found[0].name  # an unnamed volume lists as ~globalId
    vol = Volume(name, found[0].globalId, int(found[0].size))
    check_device(disk, vol)
    return vol


def _links(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_symlink()][:100_000]
    except OSError:
        return []


def check_device(disk: Disk, vol: Volume) -> None:
    """The disk's link and the volume's own links must lead to one device (a stale link is refused)."""
    device = os.path.realpath(disk.source)
    links = ([DEV_BY_NAME / vol.name] if vol.name else []) + [DEV_BY_ID / vol.global_id]
    for link in links:
        if link.is_symlink() and os.path.realpath(link) != device:
            raise Conflict(f"disk {disk.target}: {disk.source} resolves to {device}, but StorPool volume "
                           f"{vol.label} is attached as {os.path.realpath(link)}: a stale link; kvmkit will not "
                           "snapshot a volume it cannot identify")
