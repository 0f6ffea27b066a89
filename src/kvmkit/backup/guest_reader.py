"""Backup's reader for file disks in a format other than raw: the snapshot read through its guest view."""

from __future__ import annotations

from pathlib import Path

from kvmkit.backup.sources import FileReader
from kvmkit.snapshot.drivers.guest_view import GuestView


class GuestViewReader(FileReader):
    """A qcow2 snapshot (and its backing chain) read as the raw disk its guest sees: allocation from QEMU's map
    (unallocated and zero clusters are holes, never read), bytes through QEMU's block layer."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.view = GuestView(path, fmt)
        try:
            super().__init__(self.view.path)
        except BaseException:
            self.view.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.view.close()
