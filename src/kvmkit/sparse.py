"""Walking the allocated regions of a sparse file: shared by the lab, the file driver's copy and the backup reader."""

from __future__ import annotations

import os
from collections.abc import Iterator


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each allocated region, via SEEK_DATA/SEEK_HOLE: holes read as zeros and are skipped."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end
