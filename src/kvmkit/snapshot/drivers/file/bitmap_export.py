"""Reading a QEMU dirty bitmap from outside QEMU, as libvirt's pull-mode backup does: the disk's node exported
read-only over NBD on a private unix socket with the bitmap (`nbd-server-start` + `block-export-add` with
`bitmaps`), and libnbd's `block_status` on the meta context `qemu:dirty-bitmap:<name>` listing the dirty ranges.
Several bitmaps are read as one temporary union (`block-dirty-bitmap-merge`). Everything made is removed in every
path. bitmaps.py decides which bitmap to read; this module only reads it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvmkit.virt import qmp as qmp_seam

MERGE_PREFIX = "kvmkit-~merge-"  # a temporary union: "~" starts no snapshot name, and prune drops a leftover
STATUS_STEP = 1 << 30  # bytes per NBD block-status request (the protocol caps a request below 4 GiB)
NBD_STATE_DIRTY = 1
Extent = tuple[int, int]


class ReadRefused(Exception):
    """The bitmap cannot be read or trusted: backup falls back to chunk hashes, and says why in the log."""


def _qmp(dom: Any, command: str, arguments: dict | None = None) -> Any:
    return qmp_seam.execute(dom, command, arguments)


@contextlib.contextmanager
def union(dom: Any, node: str, names: list[str], granularity: int) -> Iterator[str]:
    """One bitmap to export: the single one, or a temporary merge of the chain (removed in every path; a
    leftover is pruned like any stopped kvmkit bitmap without a snapshot file)."""
    if len(names) == 1:
        yield names[0]
        return
    name = f"{MERGE_PREFIX}{uuid.uuid4().hex[:12]}"
    _qmp(dom, "transaction", {"actions": [
        {"type": "block-dirty-bitmap-add", "data": {"node": node, "name": name, "disabled": True,
                                                    "granularity": granularity}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": node, "target": name,
                                                      "bitmaps": names}}]})
    try:
        yield name
    finally:
        with contextlib.suppress(qmp_seam.QmpError):
            _qmp(dom, "block-dirty-bitmap-remove", {"node": node, "name": name})


@contextlib.contextmanager
def export(dom: Any, node: str, bitmap: str, beside: Path) -> Iterator[tuple[str, str]]:
    """A read-only NBD export of the node with the bitmap, on a private socket; always torn down."""
    folder = Path(tempfile.mkdtemp(prefix="kvmkit-nbd-"))
    st = beside.stat()
    os.chown(folder, st.st_uid, st.st_gid)  # QEMU runs as the disk's owner and makes the socket here
    socket, export = str(folder / "nbd.sock"), f"kvmkit-bitmap-{uuid.uuid4().hex[:12]}"
    started = exported = False
    try:
        try:
            _qmp(dom, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": socket}}})
            started = True
        except qmp_seam.ExecuteError as exc:  # an NBD server already runs (a libvirt backup job, a migration)
            raise ReadRefused(f"QEMU cannot start a private NBD server ({exc.error_class}): {exc.desc}") from exc
        _qmp(dom, "block-export-add", {"type": "nbd", "id": export, "node-name": node, "name": export,
                                       "writable": False, "bitmaps": [bitmap]})
        exported = True
        yield socket, export
    finally:
        if exported:
            with contextlib.suppress(qmp_seam.QmpError):
                _qmp(dom, "block-export-del", {"id": export, "mode": "hard"})
        if started:
            with contextlib.suppress(qmp_seam.QmpError):
                _qmp(dom, "nbd-server-stop")
        shutil.rmtree(folder, ignore_errors=True)


def dirty_ranges(socket: str, export: str, bitmap: str, size: int) -> list[Extent]:
    """Dirty ranges in guest order, adjacent ones merged: memory grows with the dirty extents, not the disk."""
    import nbd

    context = f"qemu:dirty-bitmap:{bitmap}"
    handle = nbd.NBD()
    try:
        handle.add_meta_context(context)
        handle.set_export_name(export)
        handle.connect_unix(socket)
        if not handle.can_meta_context(context):
            raise ReadRefused(f"QEMU's export does not offer {context}")
        end = min(size, handle.get_size())
        ranges: list[list[int]] = []
        offset = 0
        while offset < end:
            seen = [0]

            def extent(metacontext: str, start: int, entries: list[int], err: Any, at: list[int] = seen) -> int:
                if metacontext != context:
                    return 0
                pos = start
                for i in range(0, len(entries) - 1, 2):
                    length, flags = entries[i], entries[i + 1]
                    length = min(length, end - pos)
                    if length <= 0:
                        break
                    if flags & NBD_STATE_DIRTY:
                        if ranges and ranges[-1][0] + ranges[-1][1] == pos:
                            ranges[-1][1] += length
                        else:
                            ranges.append([pos, length])
                    pos += length
                at[0] = pos - start
                return 0

            handle.block_status(min(STATUS_STEP, end - offset), offset, extent)
            if seen[0] <= 0:
                raise ReadRefused(f"QEMU's block status for {context} made no progress at {offset}")
            offset += seen[0]
        return [(start, length) for start, length in ranges]
    except nbd.Error as exc:
        raise ReadRefused(f"NBD: {exc}") from exc
    finally:
        with contextlib.suppress(nbd.Error):
            handle.shutdown()  # the connection closes when the handle is collected (libnbd has no close)
