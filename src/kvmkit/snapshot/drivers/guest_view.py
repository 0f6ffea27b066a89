"""A disk file as its guest sees it: raw files are their own view; a qcow2 (with its whole backing chain) is
exported read-only as a raw file by qemu-storage-daemon's FUSE export, so every reader of raw files (backup's
extent map through SEEK_DATA, its pread loop) reads guest-visible content, never the qcow2 container.

Why QEMU's block layer and not a qcow2 parser: it is the code that made the image and the one the guest reads
through (backing chains, zero clusters, compression, subclusters), and its FUSE export answers SEEK_DATA/SEEK_HOLE
from the image's allocation map, so unallocated and zero clusters are holes that are never read.

The format always comes from the domain XML, never from probing: a guest can write a qcow2 header into a raw
disk, and probing it would make kvmkit follow a backing file of the guest's choosing.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound

QCOW2_MAGIC = b"QFI\xfb"
VIEWABLE = ("raw", "qcow2")
READY_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


def qcow2_virtual_size(path: Path) -> int:
    """The guest-visible size from the qcow2 header (magic, version, …, size at byte 24)."""
    with path.open("rb") as fh:
        header = fh.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise InvalidInput(f"{path} is not a qcow2 image, though its domain defines it as one")
    return struct.unpack(">Q", header[24:32])[0]


def guest_size(path: Path, fmt: str) -> int:
    return qcow2_virtual_size(path) if fmt == "qcow2" else path.stat().st_size


def _die_with_parent() -> None:
    """In the child: if kvmkit dies (even kill -9), the daemon gets SIGTERM, unmounts and exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class GuestView:
    """`path` as the guest sees it, for as long as the view is open; `close()` (or the context) tears it down."""

    def __init__(self, path: Path, fmt: str) -> None:
        if fmt not in VIEWABLE:
            raise InvalidInput(f"{path}: format {fmt!r} is not one kvmkit reads (raw, qcow2)")
        if not path.exists():
            raise NotFound(f"{path} does not exist")
        self.fmt = fmt
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        if fmt == "raw":
            self.path = path
            return
        self._dir = Path(tempfile.mkdtemp(prefix="kvmkit-view-", dir="/run" if os.access("/run", os.W_OK) else None))
        self.path = self._dir / "disk.raw"
        self.path.touch(mode=0o600)
        self._start(path)

    def _start(self, path: Path) -> None:
        daemon = shutil.which("qemu-storage-daemon")
        if daemon is None:
            self.close()
            raise EnvironmentProblem("qemu-storage-daemon is missing: apt-get install qemu-system-x86 "
                                     "(it reads qcow2 disks as their guests see them)")
        image = {"driver": "qcow2", "node-name": "view", "read-only": True,
                 "file": {"driver": "file", "filename": str(path), "read-only": True}}
        argv = [daemon, "--blockdev", json.dumps(image),
                "--export", f"type=fuse,id=view,node-name=view,mountpoint={self.path},writable=off"]
        stderr = (self._dir or Path("/tmp")) / "qsd.err"
        with stderr.open("wb") as err:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                          preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.ismount(self.path):
            if self._proc.poll() is not None:
                message = stderr.read_text(errors="replace").strip().splitlines()
                self.close()
                raise _failure(path, message[-1] if message else f"exit code {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.close()
                raise EnvironmentProblem(f"{path}: qemu-storage-daemon did not export it within "
                                         f"{READY_TIMEOUT_S:.0f} s")
            time.sleep(0.01)  # the export has no readiness event on the command line; mounts take ~50 ms

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # the daemon unmounts its FUSE export on SIGTERM
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            if os.path.ismount(self.path):
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> GuestView:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _failure(path: Path, message: str) -> Exception:
    """qemu's own words, cut to what names the problem (a missing base is the common case)."""
    if "Could not open" in message and "No such file" in message:
        missing = message[message.rfind("Could not open '") + len("Could not open '"):].split("'", 1)[0]
        return NotFound(f"{path}: its backing file {missing} is missing (the chain cannot be read)")
    return EnvironmentProblem(f"{path}: qemu-storage-daemon cannot read it: {message}")
