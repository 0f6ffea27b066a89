"""The O(1) consistency barrier for file disks whose reflink would hold the freeze too long.

FICLONE costs time per extent, not per byte (LAB-FACTS: 0.1 ms for a 1-extent file, 0.26 s at 16k extents,
4-6 s at 262k on XFS), and real VM disks are fragmented. So a file disk with more extents than
`extent_limit` (or on a filesystem without reflink, with --allow-full-copy) is not cloned inside the freeze.
Instead the freeze holds one O(1) barrier that moves those disks onto a qcow2 overlay each — by default one QMP
`transaction` on overlay nodes QEMU opened before the freeze, or (overlay_barrier = "libvirt") libvirt's own
disk-only, atomic external snapshot — and after the thaw the now-quiet base file is cloned (or copied), then the
overlay is committed back with an active block commit + pivot, so the VM never keeps an overlay chain. Each step
is journaled: `recover` commits or discards overlays a crash left behind. On a filesystem without reflink the same
transaction also starts a QEMU dirty bitmap for the new snapshot and stops the previous one (bitmaps.py, beside
this module), so the next incremental backup reads only what the guest wrote.

Why not always the overlay: on an unfragmented disk a reflink takes well under a millisecond, while the
overlay transaction costs tens of milliseconds inside the freeze plus a block commit afterwards. The extent count
(FIEMAP, read before the freeze) picks the cheaper path per disk.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from kvmkit.errors import Conflict, OperationFailed
from kvmkit.virt import qmp as qmp_seam
from kvmkit.virt.blockjob import commit_active
from kvmkit.virt.connection import Connection, Domain, define, external_snapshot, is_active, persistent_xml
from kvmkit.virt.disks import Disk, parse_disks

log = logging.getLogger(__name__)
FS_IOC_FIEMAP = 0xC020660B
OVERLAY_MARK = ".kvmkit-overlay-"


FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped extents, extent slots, reserved
FIEMAP_EXTENT_SIZE = 56
COUNT_ALL_BELOW = 1 << 16  # a limit at least this high: count every extent (no buffer) instead


def extent_count(path: Path, limit: int | None = None) -> int:
    """Number of extents of a file, or with `limit` at most limit + 1 ("more than the limit").

    Without a limit FIEMAP only counts, but still walks every extent: 0.3 s for a 200k-extent disk here. With a
    buffer of limit + 1 slots the kernel stops when it is full (3 ms), and which path to take is all the planner
    needs to know. No FIEMAP_FLAG_SYNC: a flush first cost up to 0.5 s on a busy disk, and delayed-allocation
    ranges still count (as one extent each)."""
    slots = 0 if limit is None or limit >= COUNT_ALL_BELOW else limit + 1
    buf = bytearray(FIEMAP_HEADER.pack(0, 0xFFFFFFFFFFFFFFFF, 0, 0, slots, 0) + bytes(FIEMAP_EXTENT_SIZE * slots))
    with path.open("rb") as fh:
        fcntl.ioctl(fh.fileno(), FS_IOC_FIEMAP, buf, True)
    return FIEMAP_HEADER.unpack_from(buf)[3]


def overlay_path(disk_source: str, tag: str) -> Path:
    return Path(f"{disk_source}{OVERLAY_MARK}{tag}")


def prepare(disks: list[Disk], tag: str) -> None:
    """Create each empty qcow2 overlay on top of its disk, outside the freeze (journaled before this runs)."""
    import subprocess

    for disk in disks:
        path = overlay_path(disk.source, tag)
        done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk.format, "-b", disk.source,
                               str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise OperationFailed(f"disk {disk.target}: cannot create overlay {path}: {done.stderr.strip()}")


def barrier(dom: Domain, disks: list[Disk], all_targets: list[str], tag: str) -> None:
    """One atomic external snapshot of `disks` (others untouched): the VM writes to overlays from now on."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = f"kvmkit-barrier-{tag}"
    disks_el = ET.SubElement(root, "disks")
    chosen = {d.target: d for d in disks}
    for target in all_targets:
        if target in chosen:
            el = ET.SubElement(disks_el, "disk", name=target, snapshot="external")
            ET.SubElement(el, "driver", type="qcow2")
            ET.SubElement(el, "source", file=str(overlay_path(chosen[target].source, tag)))
        else:
            ET.SubElement(disks_el, "disk", name=target, snapshot="no")
    external_snapshot(dom, ET.tostring(root, encoding="unicode"))


def commit_back(conn: Connection, dom: Domain, disks: list[Disk], tag: str) -> None:
    """Merge each overlay into its base and pivot back; then the overlay files go."""
    _commit_known(conn, dom, disks, tag)
    restore_persistent(dom, disks, tag)
    for disk in disks:
        overlay_path(disk.source, tag).unlink(missing_ok=True)


def _commit_known(conn: Connection, dom: Domain, disks: list[Disk], tag: str) -> None:
    """Block commit + pivot of the disks libvirt itself sees on their overlay."""
    live = {d.target: d.source for d in _parse(dom)}
    known = [d.target for d in disks if live.get(d.target) == str(overlay_path(d.source, tag))]
    if known:
        commit_active(conn, dom, known)


def _parse(dom: Domain) -> list[Disk]:
    return parse_disks(dom.XMLDesc(0))


def commit_offline(conn: Connection, dom: Domain | None, disks: list[Disk], tag: str) -> int:
    """The VM stopped while on overlays: `qemu-img commit` each into its base and point the definition back.
    dom is None when the domain is gone (a transient one whose QEMU ended): then only the files are merged —
    and qemu-img's image lock refuses if a new VM already runs on the base."""
    import subprocess

    merged = 0
    for disk in disks:
        path = overlay_path(disk.source, tag)
        if path.exists():
            done = subprocess.run(["qemu-img", "commit", "-q", str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                raise OperationFailed(f"qemu-img commit {path}: {done.stderr.strip()}")
            path.unlink()
            merged += 1
    if dom is not None:
        restore_persistent(dom, disks, tag)
    return merged


def finish(conn: Connection, dom: Domain | None, disks: list[Disk], tag: str,
           mode: str) -> str:
    """Whatever a crash left between barrier and commit, merged back so one image per disk remains; says what.
    A running VM may be on a QMP overlay (libvirt unaware), or on a libvirt-known one (libvirt's barrier, or a
    restart from the redirected persistent definition) — each is committed by the side that knows it."""
    if dom is None or not is_active(dom):
        return f"{commit_offline(conn, dom, disks, tag)} overlay(s) merged offline"
    if mode == "qmp":
        _commit_known(conn, dom, disks, tag)  # restarted from the redirected definition: libvirt's overlay now
        qmp_commit_back(dom, disks, tag)
    else:
        commit_back(conn, dom, disks, tag)
    _prune_bitmaps(dom, disks)
    return f"{len(disks)} overlay(s) of snapshot {tag} merged back; one image a disk"


def _prune_bitmaps(dom: Domain, disks: list[Disk]) -> None:
    """kvmkit's dirty bitmaps whose snapshot file is gone are dropped (recover runs this path too)."""
    from kvmkit.snapshot.drivers.file import bitmaps

    for disk in disks:
        try:
            bitmaps.prune(dom, disk.source, lambda old, d=disk: bitmaps.snapshot_file(d.source, old).exists())
        except qmp_seam.QmpError as exc:
            log.warning("disk %s: kvmkit's dirty bitmaps not pruned (%s)", disk.target, exc)


def _set_disk_source(xml: str, target: str, path: str, fmt: str) -> str:
    """The disk `target` of a definition now names `path` in format `fmt`, with no backing chain written out
    (libvirt reads a qcow2 overlay's chain from its header, where qemu-img recorded the base and its format)."""
    root = ET.fromstring(xml)
    for el in root.findall("./devices/disk"):
        tgt = el.find("target")
        if tgt is None or tgt.get("dev") != target:
            continue
        source, driver, backing = el.find("source"), el.find("driver"), el.find("backingStore")
        if source is not None:
            source.set("file", path)
        if driver is not None:
            driver.set("type", fmt)
        if backing is not None:
            el.remove(backing)
    return ET.tostring(root, encoding="unicode")


# --- the QMP barrier (the default: overlay_barrier = "qmp") -------------------------------------------------------
# The overlay node is added to QEMU's block graph *before* the freeze, so the freeze holds one QMP `transaction`
# of `blockdev-snapshot` actions (measured here: ~2.5 ms, against libvirt's ~17-35 ms, which adds the overlay nodes,
# relabels and saves its status inside the call). It goes behind libvirt's back: libvirt marks the domain tainted
# (custom-monitor) and, until the commit, its live XML still names the base file. What keeps that safe:
#   - the persistent definition is pointed at the overlay *before the freeze* (redirect_persistent), while the
#     overlay is still empty — so at every instant a VM started by libvirt (after a host crash, or by anyone before
#     `recover`) boots on a chain that holds every write the guest was told is done;
#   - live migration is blocked in QEMU for as long as a kvmkit overlay node may be on top (block_migration): a
#     migration would start the destination on libvirt's view, the base, without the overlay's writes;
#   - `recover` (run by every kvmkit snapshot command) finishes whatever a crash left: a QMP overlay, a libvirt
#     overlay (the VM restarted from the redirected definition), or overlay files of a stopped VM (qemu-img commit,
#     which QEMU's image locks refuse if anything else has the base open).
# A transient domain (CloudStack, a nova hard reboot) is rebuilt from the cloud's own database, which names the base:
# that is equally true of libvirt's own external snapshots, and why `recover` should run before such a restart.

def qmp(dom: Domain, execute: str, arguments: dict | None = None) -> Any:
    """One QMP command (virt.qmp does the talking; its ExecuteError keeps QEMU's error class)."""
    return qmp_seam.execute(dom, execute, arguments)


def overlay_node(target: str) -> str:
    return f"kvmkit-ov-{target}"


def _top_nodes(dom: Domain) -> dict[str, str]:
    """disk target → the node QEMU writes to now (via the device alias in the live XML)."""
    aliases = {}
    for el in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
        tgt, alias = el.find("target"), el.find("alias")
        if tgt is not None and alias is not None:
            aliases[f"/machine/peripheral/{alias.get('name')}/virtio-backend"] = tgt.get("dev", "")
    nodes = {}
    for block in qmp(dom, "query-block") or []:  # type: ignore[union-attr]
        target = aliases.get(block.get("qdev", ""))
        if target and "inserted" in block:
            nodes[target] = block["inserted"]["node-name"]
    return nodes


@dataclass(frozen=True)
class QmpBarrier:
    """What the freeze's one QMP transaction does: the overlays go on top of `tops` (target → node), after the
    dirty-bitmap actions of the disks that cannot reflink (snapshot/drivers/file/bitmaps.py)."""

    tops: dict[str, str]
    bitmap_actions: list[dict] = field(default_factory=list)


def qmp_prepare(dom: Domain, disks: list[Disk], tag: str) -> QmpBarrier:
    """Overlays created and opened by QEMU (not yet in use), the persistent definition pointed at them, and for
    disks without reflink the dirty-bitmap actions: everything the transaction inside the freeze needs."""
    block_migration(dom, Path(disks[0].source).parent)
    tops = _top_nodes(dom)
    actions = _bitmap_actions(dom, disks, tag)
    caching = _cache_modes(dom)
    prepare(disks, tag)
    for disk in disks:
        path = overlay_path(disk.source, tag)
        st = os.stat(disk.source)
        os.chown(path, st.st_uid, st.st_gid)  # QEMU opens it as the disk's owner (libvirt-qemu)
        direct, aio = caching.get(disk.target, (False, None))
        file_node: dict = {"driver": "file", "filename": str(path)}
        if aio is not None:
            file_node["aio"] = aio
        qmp(dom, "blockdev-add", {"driver": "qcow2", "node-name": overlay_node(disk.target), "backing": None,
                                  "cache": {"direct": direct, "no-flush": False}, "file": file_node})
    redirect_persistent(dom, disks, tag)
    return QmpBarrier({disk.target: tops[disk.target] for disk in disks}, actions)


def _bitmap_actions(dom: Domain, disks: list[Disk], tag: str) -> list[dict]:
    """Disks on a filesystem without reflink get a dirty bitmap per snapshot (FIEMAP cannot compare two full
    copies); stopped bitmaps whose snapshot is gone are pruned first. A QEMU that refuses leaves the snapshot
    without a bitmap (its next backup compares hashes), never without the snapshot."""
    from kvmkit.snapshot.drivers.file import bitmaps
    from kvmkit.snapshot.drivers.file.reflink import supports_reflink

    actions: list[dict] = []
    for disk in disks:
        if supports_reflink(Path(disk.source).parent):
            continue
        try:
            bitmaps.prune(dom, disk.source, lambda old, d=disk: bitmaps.snapshot_file(d.source, old).exists())
            actions += bitmaps.barrier_actions(dom, disk.source, disk.format, tag)
        except qmp_seam.QmpError as exc:
            log.warning("disk %s: no dirty bitmap for snapshot %s (%s)", disk.target, tag, exc)
    return actions


NO_MIGRATION_NODE = "kvmkit-no-migration"
EMPTY_DIR = ".kvmkit-empty"


def block_migration(dom: Domain, beside: Path) -> bool:
    """Make QEMU refuse live migration until unblock_migration: QEMU has no QMP command for a migration blocker,
    but a writable vvfat node registers one ("does not support live migration"), so one is added — of an empty
    folder beside the disks, attached to nothing. A migration already running makes the snapshot wait for another
    time (Conflict); a QEMU that cannot add the node (e.g. AppArmor denies the folder) leaves migration unblocked,
    with a warning: the barrier is still correct, only a migration started in those seconds would not be refused.
    Decided on what QEMU reports (its node names, its migration status), never on an error message's wording."""
    if NO_MIGRATION_NODE in _node_names(dom):
        return True  # left by an interrupted run: still blocking, recover removes it
    if _migrating(dom):
        raise Conflict(f"VM {dom.name()} is being migrated; snapshot it when the migration is over")
    empty = beside / EMPTY_DIR
    empty.mkdir(mode=0o755, exist_ok=True)
    try:
        qmp(dom, "blockdev-add", {"driver": "vvfat", "node-name": NO_MIGRATION_NODE, "dir": str(empty),
                                  "rw": True, "read-only": False})
        return True
    except qmp_seam.QmpError as exc:
        if _migrating(dom):  # it started between our look and the add: QEMU refused the blocker
            raise Conflict(f"VM {dom.name()} is being migrated; snapshot it when the migration is over") from exc
        log.warning("VM %s: live migration not blocked during the overlay barrier (%s): %s", dom.name(),
                    getattr(exc, "error_class", "no QMP reply"), exc)
        return False


MIGRATION_DONE = {"none", "completed", "failed", "cancelled"}


def _migrating(dom: Domain) -> bool:
    status = (qmp(dom, "query-migrate") or {}).get("status")
    return status is not None and status not in MIGRATION_DONE


def _node_names(dom: Domain) -> set[str]:
    return {n["node-name"] for n in qmp(dom, "query-named-block-nodes", {"flat": True}) or []}


def unblock_migration(dom: Domain, present: set[str]) -> None:
    if NO_MIGRATION_NODE in present:
        qmp(dom, "blockdev-del", {"node-name": NO_MIGRATION_NODE})


def _cache_modes(dom: Domain) -> dict[str, tuple[bool, str | None]]:
    """target → (O_DIRECT?, aio) of each disk as libvirt configured it, so the overlay is opened the same way
    (libvirt does this for its own overlays; cache='none' must not turn into host page caching)."""
    modes = {}
    for el in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
        tgt, driver = el.find("target"), el.find("driver")
        if tgt is None or driver is None:
            continue
        direct = driver.get("cache") in ("none", "directsync")
        io = driver.get("io")
        modes[tgt.get("dev", "")] = (direct, io if io in ("native", "io_uring", "threads") and
                                     (direct or io != "native") else None)
    return modes


def redirect_persistent(dom: Domain, disks: list[Disk], tag: str) -> bool:
    """Point the persistent definition's disks at their (still empty) overlays: see the note above. False for a
    transient domain, which has no definition to point."""
    xml = persistent_xml(dom)
    if xml is None:
        return False
    for disk in disks:
        xml = _set_disk_source(xml, disk.target, str(overlay_path(disk.source, tag)), "qcow2")
    define(dom, xml)
    return True


def restore_persistent(dom: Domain, disks: list[Disk], tag: str) -> bool:
    """Point the persistent definition back at the base files where it still names an overlay."""
    xml = persistent_xml(dom)
    if xml is None:
        return False
    named = {d.target: d.source for d in parse_disks(xml)}
    todo = [d for d in disks if named.get(d.target) == str(overlay_path(d.source, tag))]
    for disk in todo:
        xml = _set_disk_source(xml, disk.target, disk.source, disk.format)
    if todo:
        define(dom, xml)
    return bool(todo)


def qmp_barrier(dom: Domain, prepared: QmpBarrier) -> None:
    """One atomic transaction: the previous dirty bitmaps stopped, this snapshot's started, the overlays on top."""
    qmp(dom, "transaction", {"actions": prepared.bitmap_actions + [
        {"type": "blockdev-snapshot", "data": {"node": node, "overlay": overlay_node(target)}}
        for target, node in prepared.tops.items()]})


def qmp_commit_back(dom: Domain, disks: list[Disk], tag: str, timeout_s: float = 600.0) -> None:
    """Commit every kvmkit overlay that is on top back into its base and drop it; remove the overlay files."""
    import time

    active = {t: n for t, n in _top_nodes(dom).items() if n.startswith("kvmkit-ov-")}
    for target in active:
        qmp(dom, "block-commit", {"job-id": f"kvmkit-commit-{target}", "device": overlay_node(target)})
    deadline = time.monotonic() + timeout_s
    pending = {f"kvmkit-commit-{t}" for t in active}
    while pending:  # QMP events go to libvirt, not to us: poll the jobs, briefly
        jobs = {j["id"]: j["status"] for j in qmp(dom, "query-jobs") or []}  # type: ignore[union-attr]
        for job_id in list(pending):
            status = jobs.get(job_id)
            if status == "ready":
                qmp(dom, "job-complete", {"id": job_id})
            elif status is None:
                pending.discard(job_id)
            elif status in ("aborting", "concluded") and job_id in jobs:
                qmp(dom, "job-dismiss", {"id": job_id}) if status == "concluded" else None
        if time.monotonic() > deadline:
            raise OperationFailed(f"VM {dom.name()}: committing the overlays did not finish in {timeout_s:.0f} s")
        time.sleep(0.01)
    still = [t for t, n in _top_nodes(dom).items() if n.startswith("kvmkit-ov-")]
    if still:
        raise OperationFailed(f"VM {dom.name()}: the overlay of {', '.join(still)} could not be committed back")
    present = _node_names(dom)
    for disk in disks:
        if overlay_node(disk.target) in present:
            qmp(dom, "blockdev-del", {"node-name": overlay_node(disk.target)})
    unblock_migration(dom, present)
    restore_persistent(dom, disks, tag)  # only now: until the pivot the base lacked the overlay's writes
    for disk in disks:
        overlay_path(disk.source, tag).unlink(missing_ok=True)
