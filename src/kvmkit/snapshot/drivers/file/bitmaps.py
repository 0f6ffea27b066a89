"""QEMU dirty bitmaps for file disks without reflink: an incremental backup reads only what the guest wrote.

Two ext4 copies share no extents, so FIEMAP cannot tell what changed between two snapshots there. QEMU can: the
overlay barrier's QMP transaction (overlay.py, inside the freeze) also adds a dirty bitmap to the disk's node,
named after the new snapshot, and disables the bitmap the previous snapshot added — in the same atomic step
that makes the snapshot. So the previous snapshot's bitmap holds exactly the guest's writes between the two
snapshots (the writes made while the disk sat on the overlay reach the base, and its enabled bitmap, through the
block commit). Proxmox Backup Server and libvirt's checkpoints (which virtnbdbackup drives) work the same way;
kvmkit ties each bitmap to a snapshot instead of to a backup.

A bitmap's name says which snapshot started it and which one it followed: `kvmkit-<tag>` or
`kvmkit-<tag>/<previous tag>`, so a reader trusts the previous bitmap only when the newer snapshot's bitmap says
it disabled exactly that one (a snapshot deleted in between, a VM restart, a crash: the chain breaks and backup
falls back to chunk hashes). Raw disks get in-memory bitmaps (gone when QEMU ends), qcow2 disks persistent ones
(stored in the image, they survive a restart).

The bitmap is read (bitmap_export.py) the way libvirt's pull-mode backup reads it: the node is exported
read-only over NBD on a private unix socket (`nbd-server-start` + `block-export-add` with `bitmaps`), and libnbd's
`block_status` with the meta context `qemu:dirty-bitmap:<name>` lists the dirty ranges; the export is torn down in
every path.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmkit.snapshot.drivers.file import bitmap_export
from kvmkit.snapshot.drivers.file.bitmap_export import ReadRefused
from kvmkit.virt import qmp as qmp_seam

log = logging.getLogger(__name__)
PREFIX = "kvmkit-"
GRANULARITY = 4096  # one bit per 4 KiB: scattered guest writes cost their own size to back up (QEMU's default,
# 64 KiB, would read 16× a scattered 4 KiB write)
MAX_CHAIN = 64  # stopped bitmaps crossed to reach an older snapshot (snapshots taken but not backed up)
MAX_BITS = 1 << 24  # 2 MiB of QEMU memory per bitmap: 4 KiB granules up to a 64 GiB disk, 64 KiB at 1 TiB
Extent = tuple[int, int]


@dataclass(frozen=True)
class Bitmap:
    name: str
    tag: str  # the snapshot that added it
    previous: str | None  # the snapshot whose bitmap it disabled when it was added
    recording: bool = False
    inconsistent: bool = False  # a persistent bitmap QEMU could not store (it crashed): only removable
    granularity: int = GRANULARITY


@dataclass(frozen=True)
class NodeBitmaps:
    node: str  # the format node QEMU opened the disk with
    size: int  # the guest-visible size
    bitmaps: list[Bitmap]  # kvmkit's, by name


def name_for(tag: str, previous: str | None) -> str:
    return f"{PREFIX}{tag}/{previous}" if previous else f"{PREFIX}{tag}"


def parse(name: str) -> Bitmap | None:
    """kvmkit's reading of a bitmap name (recording unknown: False); None for a name kvmkit did not make."""
    if not name.startswith(PREFIX):
        return None
    tag, _, previous = name[len(PREFIX):].partition("/")
    return Bitmap(name, tag, previous or None) if tag else None


def granularity_for(size: int) -> int:
    """4 KiB (a scattered 4 KiB write costs its own size to back up) while the bitmap stays within MAX_BITS,
    coarser above: QEMU keeps every snapshot's bitmap in memory, one bit per granule."""
    granularity = GRANULARITY
    while size > granularity * MAX_BITS:
        granularity *= 2
    return granularity


def plan_barrier(found: NodeBitmaps, tag: str, fmt: str) -> tuple[list[str], list[dict]]:
    """(names to remove before the freeze, transaction actions) that stop every recording kvmkit bitmap and start
    this snapshot's. The new one names its predecessor only when exactly one was recording. A bitmap already
    carrying this snapshot's name is a leftover of a failed attempt (plan refuses a name whose snapshot file
    exists): it goes, so the transaction cannot fail on a duplicate name inside the freeze."""
    stale = [b.name for b in found.bitmaps if b.tag == tag]
    live = [b for b in found.bitmaps if b.tag != tag and b.recording and not b.inconsistent]
    previous = live[0].tag if len(live) == 1 else None
    actions = [{"type": "block-dirty-bitmap-disable", "data": {"node": found.node, "name": b.name}} for b in live]
    actions.append({"type": "block-dirty-bitmap-add", "data": {
        "node": found.node, "name": name_for(tag, previous), "granularity": granularity_for(found.size),
        "persistent": fmt == "qcow2", "disabled": False}})
    return stale, actions


def trusted_chain(found: NodeBitmaps, own_tag: str, older_tag: str) -> list[Bitmap]:
    """The stopped bitmaps that together hold exactly the writes between the two snapshots, oldest first: from this
    snapshot's bitmap, follow each one's predecessor back to the older snapshot's (snapshots taken in between
    but never backed up are crossed; one deleted breaks the chain, its bitmap went with it). Else ReadRefused."""
    by_tag = {b.tag: b for b in found.bitmaps}
    own = by_tag.get(own_tag)
    if own is None or older_tag not in by_tag:
        raise ReadRefused(f"the dirty bitmap of snapshot {own_tag if own is None else older_tag} is gone "
                          "(the VM restarted, the snapshot was deleted, or it was taken without the QMP "
                          "overlay barrier)")
    chain: list[Bitmap] = []
    step = own
    while step.previous != older_tag:
        if step.previous is None or step.previous not in by_tag or len(chain) >= MAX_CHAIN:
            raise ReadRefused(f"snapshot {own_tag}'s bitmap does not lead back to {older_tag}'s (a snapshot in "
                              f"between was deleted, or more than {MAX_CHAIN} lie between)")
        step = by_tag[step.previous]
        chain.append(step)
    chain.append(by_tag[older_tag])
    for bitmap in chain:
        if bitmap.inconsistent or bitmap.recording:
            raise ReadRefused(f"the dirty bitmap of snapshot {bitmap.tag} is "
                              f"{'inconsistent (QEMU did not store it)' if bitmap.inconsistent else 'still recording'}")
    if len({b.granularity for b in chain}) > 1:
        raise ReadRefused("the bitmaps between the two snapshots have different granularities (a resized disk)")
    return chain[::-1]


def _qmp(dom: Any, command: str, arguments: dict | None = None) -> Any:
    return qmp_seam.execute(dom, command, arguments)


def node_of(dom: Any, source: str) -> NodeBitmaps | None:
    """The node QEMU opened `source` with (the format node, whose writes the guest's are), and kvmkit's bitmaps on
    it; None when QEMU has no such node."""
    for node in _qmp(dom, "query-named-block-nodes", {"flat": True}) or []:
        if node.get("file") != source or node.get("drv") not in ("raw", "qcow2"):
            continue  # the protocol node (drv "file") names the same file: the bitmap goes on the format node
        bitmaps = []
        for info in node.get("dirty-bitmaps") or []:
            parsed = parse(str(info.get("name", "")))
            if parsed is not None:
                bitmaps.append(Bitmap(parsed.name, parsed.tag, parsed.previous, bool(info.get("recording")),
                                      bool(info.get("inconsistent", False)),
                                      int(info.get("granularity", GRANULARITY))))
        size = int((node.get("image") or {}).get("virtual-size", 0))
        return NodeBitmaps(node["node-name"], size, bitmaps)
    return None


def barrier_actions(dom: Any, source: str, fmt: str, tag: str) -> list[dict]:
    """The transaction actions (before the overlays') for the disk `source`; leftovers of this tag removed now."""
    found = node_of(dom, source)
    if found is None:
        return []
    stale, actions = plan_barrier(found, tag, fmt)
    for name in stale:
        _qmp(dom, "block-dirty-bitmap-remove", {"node": found.node, "name": name})
    return actions


def remove(dom: Any, source: str, tags: set[str]) -> list[str]:
    """Remove kvmkit's bitmaps of these snapshots from the running QEMU's node of `source`; the names removed."""
    found = node_of(dom, source)
    if found is None:
        return []
    gone = []
    for bitmap in found.bitmaps:
        if bitmap.tag in tags:
            _qmp(dom, "block-dirty-bitmap-remove", {"node": found.node, "name": bitmap.name})
            gone.append(bitmap.name)
    return gone


def remove_offline(image: Path, tag: str) -> list[str]:
    """A stopped VM's qcow2 keeps persistent bitmaps in the file: remove this snapshot's with qemu-img (whose
    image lock refuses if anything has the image open)."""
    done = subprocess.run(["qemu-img", "info", "--force-share", "--output=json", "-f", "qcow2", str(image)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return []
    import json

    data = (json.loads(done.stdout).get("format-specific") or {}).get("data") or {}
    gone = []
    for info in data.get("bitmaps") or []:
        parsed = parse(str(info.get("name", "")))
        if parsed is not None and parsed.tag == tag:
            subprocess.run(["qemu-img", "bitmap", "--remove", "-f", "qcow2", str(image), parsed.name],
                           capture_output=True, text=True, check=False)
            gone.append(parsed.name)
    return gone


def prune(dom: Any, source: str, snapshot_exists: Callable[[str], bool]) -> list[str]:
    """Remove kvmkit's bitmaps whose snapshot file does not exist: a snapshot that died between the barrier and
    its copy, one whose bitmap could not be removed with it (a qcow2 node is read-only while an overlay sits on
    it), one removed by hand, a temporary union left by a killed backup. Nothing can be read against them. Called
    only under the VM's snapshot lock, before a barrier or after its commit, when no snapshot of this catalog is
    between its barrier and its copy."""
    found = node_of(dom, source)
    if found is None:
        return []
    return remove(dom, source, {b.tag for b in found.bitmaps if not snapshot_exists(b.tag)})


# --- reading a bitmap ---------------------------------------------------------------------------------------------

def changed_extents(dom: Any, source: str, own_tag: str, older_tag: str, size: int) -> list[Extent]:
    """The guest ranges written between snapshot `older_tag` and snapshot `own_tag` of the disk `source`:
    the older snapshot's stopped bitmap, trusted only if this snapshot's bitmap says it stopped exactly that one."""
    found = node_of(dom, source)
    if found is None:
        raise ReadRefused(f"QEMU has no node for {source}")
    chain = trusted_chain(found, own_tag, older_tag)
    with bitmap_export.union(dom, found.node, [b.name for b in chain], chain[0].granularity) as name, \
            bitmap_export.export(dom, found.node, name, Path(source)) as (socket, export):
        return bitmap_export.dirty_ranges(socket, export, name, size)


# --- the file driver's side: what a snapshot record says, reading and deleting -----------------------------------

LOCATION_KEY = "dirty_bitmap"  # DiskSnapshot.location: the bitmap's name without its "/<previous>" part
VM_KEY = "vm_uuid"  # DiskSnapshot.location: whose QEMU holds it


def location_for(tag: str, vm_uuid: str | None) -> dict[str, str]:
    """What a file snapshot taken by the overlay barrier on a filesystem without reflink records."""
    return {LOCATION_KEY: f"{PREFIX}{tag}", VM_KEY: vm_uuid} if vm_uuid else {}


def snapshot_file(source: str, tag: str) -> Path:
    """The file driver's snapshot of `source` named `tag` (its naming: `<disk>@<tag>.kvmkit`)."""
    return Path(f"{source}@{tag}.kvmkit")


def tag_in(handle: str, source: str) -> str | None:
    """The snapshot name in a file snapshot's handle (`<source>@<tag>.kvmkit`) of this disk, else None."""
    head = f"{source}@"
    if not handle.startswith(head) or not handle.endswith(".kvmkit"):
        return None
    return handle[len(head):-len(".kvmkit")] or None


@contextlib.contextmanager
def _running_domain(uri: str, vm_uuid: str) -> Iterator[Any | None]:
    from kvmkit.virt.connection import connection, is_active, lookup_uuid

    with connection(uri) as conn:
        dom = lookup_uuid(conn, vm_uuid)
        yield dom if dom is not None and is_active(dom) else None


class DirtyBitmapChanges:
    """TracksChanges for a file snapshot with a dirty bitmap: mixed into the file driver's readers."""

    change_method = "dirty-bitmap"
    snap: Any
    libvirt_uri: str

    def changed_since(self, older_handle: str) -> list[Extent] | None:
        snap = self.snap
        own, older = tag_in(snap.handle, snap.source), tag_in(older_handle, snap.source)
        vm_uuid = snap.location.get(VM_KEY)
        if own is None or older is None or vm_uuid is None:
            return None
        try:
            with _running_domain(self.libvirt_uri, vm_uuid) as dom:
                if dom is None:
                    raise ReadRefused("the VM is not running (its QEMU holds the bitmaps)")
                extents = changed_extents(dom, snap.source, own, older, snap.size_bytes)
        except (ReadRefused, qmp_seam.QmpError, OSError) as exc:
            log.warning("disk %s: no dirty bitmap since snapshot %s (%s): comparing chunk hashes instead",
                        snap.target, older, exc)
            return None
        log.info("disk %s: dirty bitmap since snapshot %s: %d extents, %d bytes", snap.target, older,
                 len(extents), sum(length for _, length in extents))
        return extents


def delete_bitmap(snap: Any, libvirt_uri: str) -> None:
    """Remove the bitmap a deleted file snapshot started (only that one, by its recorded name); a VM that is not
    running has none left (raw) or keeps it in its qcow2 (removed with qemu-img). Failures are logged: the
    snapshot's deletion stands, and the next snapshot prunes what is left."""
    tag, vm_uuid = snap.location.get(LOCATION_KEY, "")[len(PREFIX):], snap.location.get(VM_KEY)
    if not tag or vm_uuid is None:
        return
    try:
        with _running_domain(libvirt_uri, vm_uuid) as dom:
            if dom is not None:
                gone = remove(dom, snap.source, {tag})
            elif snap.format == "qcow2":
                gone = remove_offline(Path(snap.source), tag)
            else:
                gone = []
        log.info("disk %s: dirty bitmap(s) removed: %s", snap.target, ", ".join(gone) or "none left")
    except (qmp_seam.QmpError, OSError) as exc:
        log.warning("disk %s: the dirty bitmap of snapshot %s was not removed (%s)", snap.target, tag, exc)
