"""Pure chunk arithmetic and manifest chains."""

from __future__ import annotations

from datetime import datetime

import pytest

from kvmkit.backup import chunking
from kvmkit.backup.model import BackupManifest, DiskBackup
from kvmkit.errors import InvalidInput

MiB = 1 << 20
UUID = "00000000-0000-4000-8000-000000000001"


def h(letter: str) -> str:
    """A well-formed chunk id standing for a letter (manifests accept nothing else)."""
    return letter.encode().hex().rjust(64, "0")


def manifest(name: str, parent: str | None, chunks: list, full: bool) -> BackupManifest:
    return BackupManifest(vm="vm", vm_uuid=UUID, snapshot=name, snapshot_created=datetime(2026, 1, 1),
                          created=datetime(2026, 1, 1), parent=parent, target="t",
                          disks=[DiskBackup(target="vda", driver="file", source="/d", handle="/d@x",
                                            size_bytes=8 * MiB, full=full, chunks=chunks)])


@pytest.mark.parametrize(("extents", "expected"), [
    ([], []),
    ([(0, 1)], [0]),
    ([(MiB - 1, 2)], [0, 1]),
    ([(MiB, MiB)], [1]),
    ([(3 * MiB, 0)], []),
    ([(7 * MiB + 5, 10 * MiB)], [7]),  # clipped to the disk
    ([(9 * MiB, MiB)], []),  # past the end
    ([(0, 1), (0, 2 * MiB)], [0, 1]),
])
def test_touched_chunks_covers_exactly_the_overlapped_chunks(extents, expected):
    assert chunking.touched_chunks(extents, 8 * MiB, MiB) == expected


def test_extents_length_counts_overlaps_once():
    assert chunking.extents_length([(0, 10), (5, 10), (100, 1), (0, 3)]) == 16


def test_chunk_span_of_the_short_last_chunk_and_out_of_range():
    assert chunking.chunk_span(2, 2 * MiB + 7, MiB) == (2 * MiB, 7)
    with pytest.raises(ValueError):
        chunking.chunk_span(3, 2 * MiB + 7, MiB)


def test_delta_lists_changed_and_zeroed_chunks_only():
    parent = {0: "a", 1: "b", 2: "c"}
    assert chunking.delta(parent, [0, 1, 2, 5], {0: "a", 1: "B", 2: None, 5: "f"}) == [(1, "B"), (2, None), (5, "f")]


def test_resolve_walks_the_chain_to_the_full_record():
    full = manifest("s1", None, [(0, h("a")), (1, h("b"))], True)
    inc = manifest("s2", "s1", [(1, None), (4, h("e"))], False)
    inc2 = manifest("s3", "s2", [(0, h("A"))], False)
    chain = chunking.chain(inc2, {m.snapshot: m for m in (full, inc, inc2)})
    assert [m.snapshot for m in chain] == ["s3", "s2", "s1"]
    assert chunking.resolve("vda", chain)[1] == {0: h("A"), 4: h("e")}


def test_a_broken_chain_is_an_error_naming_the_missing_backup():
    inc = manifest("s2", "s1", [], False)
    with pytest.raises(InvalidInput, match="needs backup s1"):
        chunking.chain(inc, {"s2": inc})


def test_a_parent_loop_is_an_error():
    a, b = manifest("a", "b", [], False), manifest("b", "a", [], False)
    with pytest.raises(InvalidInput, match="loop"):
        chunking.chain(a, {"a": a, "b": b})


def test_iter_plan_marks_holes():
    assert list(chunking.iter_plan(3 * MiB, MiB, [(MiB + 10, 5)])) == [(0, False), (1, True), (2, False)]
