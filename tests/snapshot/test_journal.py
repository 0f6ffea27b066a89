"""The journal's typed payloads: what engine and revert write is exactly what recover parses back, and a row
that is not exactly one of ours is marked damaged rather than guessed at."""

from __future__ import annotations

import json

import pytest

from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.journal import (
    MAX_ENTRY_BYTES,
    FileStaging,
    HandleMove,
    OverlayDisk,
    OverlayJournal,
    RbdCloneStaging,
    RbdRollbackStaging,
    RevertJournal,
    StagedRevert,
    dump_payload,
    parse_entry,
)

STAGED = [
    StagedRevert("vda", "file", FileStaging(source="/p/d.raw", new="/p/d.raw.kvmkit-new", old="/p/d.raw.kvmkit-old")),
    StagedRevert("vdb", "rbd", RbdCloneStaging(
        pool="rbd", image="i", snap="kvmkit-s", new="i.kvmkit-new", base="i.kvmkit-base-1",
        handle_moves=[HandleMove(old_prefix="rbd/i@", new_prefix="rbd/i.kvmkit-base-1@")])),
    StagedRevert("vdc", "rbd", RbdRollbackStaging(pool="rbd", image="j", snap="kvmkit-s", group="rbd/kvmkit-g",
                                                  safety="kvmkit-prerevert-1", token="t")),
]


def test_a_revert_journal_round_trips_through_the_catalog_with_its_typed_staging(tmp_path):
    catalog = Catalog(tmp_path / "c.sqlite")
    entry_id = catalog.journal_add("u1", RevertJournal(snapshot="s", phase="staging"))
    catalog.journal_update(entry_id, RevertJournal(snapshot="s", phase="staged", staged=STAGED))
    [entry] = catalog.journal()
    assert entry.damage is None and entry.op == "revert" and entry.vm_uuid == "u1"
    assert entry.payload == RevertJournal(snapshot="s", phase="staged", staged=STAGED)
    assert [type(s.data) for s in entry.payload.staged] == [FileStaging, RbdCloneStaging, RbdRollbackStaging]
    assert entry.payload.staged[1].data.moves() == [HandleMove(old_prefix="rbd/i@",
                                                               new_prefix="rbd/i.kvmkit-base-1@")]
    assert entry.payload.staged[0].data.moves() == []
    catalog.journal_done(entry_id)
    assert catalog.journal() == []


def test_an_overlay_row_written_before_the_mode_was_recorded_reads_as_qmp():
    """The old reader assumed "libvirt" when the mode was missing, although the default barrier is QMP; the QMP
    finish path commits libvirt-known overlays too, so it is the safe reading of such a row."""
    entry = parse_entry(1, "u", "overlay", json.dumps(
        {"tag": "t", "disks": [{"target": "vda", "source": "/p/d.raw", "format": "raw"}]}))
    assert entry.payload == OverlayJournal(tag="t", mode="qmp",
                                           disks=[OverlayDisk(target="vda", source="/p/d.raw", format="raw")])


def test_the_mode_written_is_the_mode_read():
    written = OverlayJournal(tag="t", mode="libvirt", disks=[OverlayDisk(target="vda", source="/x", format="qcow2")])
    assert parse_entry(1, "u", "overlay", dump_payload(written)).payload == written


@pytest.mark.parametrize(("op", "text", "why"), [
    ("revert", '{"snapshot": "s", "phase": "half", "staged": []}', "phase"),
    ("revert", '{"snapshot": "s", "phase": "staged", "staged": [], "extra": 1}', "extra"),
    ("revert", '{"snapshot": 5, "phase": "staged", "staged": []}', "snapshot"),
    ("revert", '{"snapshot": "s", "phase": "staged", "staged": [{"target": "vda", "driver": "file", '
               '"data": {"kind": "file", "source": "/a", "new": "/b"}}]}', "old"),
    ("revert", '{"snapshot": "s", "phase": "staged", "staged": [{"target": "vda", "driver": "x", '
               '"data": {"kind": "tape"}}]}', "unknown staging kind"),
    ("revert", '["snapshot"]', "not a JSON object"),
    ("revert", "{not json", "Expecting"),
    ("overlay", '{"tag": "t", "mode": "telepathy", "disks": []}', "mode"),
    ("overlay", '{"tag": "t", "disks": [{"target": "vda", "source": "/x"}]}', "format"),
    ("teleport", "{}", "unknown journal operation"),
])
def test_a_row_that_is_not_exactly_ours_is_damaged_not_guessed(op, text, why):
    entry = parse_entry(7, "u", op, text)
    assert entry.payload is None and why in (entry.damage or "")


def test_an_oversized_row_is_not_parsed():
    entry = parse_entry(1, "u", "revert", '{"snapshot": "' + "x" * MAX_ENTRY_BYTES + '"}')
    assert entry.payload is None and "bytes" in (entry.damage or "")


def test_payloads_are_frozen():
    with pytest.raises(ValueError):
        STAGED[0].data.source = "/elsewhere"  # type: ignore[misc]
