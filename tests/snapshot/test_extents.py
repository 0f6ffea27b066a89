"""Counting extents to choose a path: exact without a limit, capped at limit + 1 with one (cheap on huge counts)."""

from __future__ import annotations

import os
from pathlib import Path

from kvmkit.snapshot.drivers.file.overlay import extent_count


def spotty(path: Path, blocks: int) -> None:
    """A sparse file with data in every other 4 KiB block: `blocks` separate extents."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(blocks):
            os.pwrite(fd, b"x" * 4096, 2 * i * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_extent_count_is_exact_below_the_limit_and_capped_above(tmp_path):
    path = tmp_path / "disk.raw"
    spotty(path, 40)
    assert extent_count(path) == 40
    assert extent_count(path, 100) == 40
    assert extent_count(path, 10) == 11  # "more than 10" is all the planner asks
    assert extent_count(path, 1 << 20) == 40  # a huge limit counts without a buffer
