"""Writing a restored disk as qcow2: the guest's bytes are restored (and verified) into an unnamed raw scratch
file beside the destination, then `qemu-img convert` writes the qcow2 into the staged file. Both files are passed
to qemu-img as open descriptors (/dev/fd/N), so no path is looked up again between kvmkit's checks and the write.

The result is self-contained (no backing file): a restore must not depend on a template that may have changed or
gone. Holes stay holes (unallocated clusters); the scratch file never has a name another process could open.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from kvmkit.errors import EnvironmentProblem, OperationFailed

FORMATS = ("raw", "qcow2")


@contextmanager
def scratch_file(folder_fd: int, size: int) -> Iterator[int]:
    """A sparse file of `size` bytes in the destination's folder with no name (O_TMPFILE), or, where the
    filesystem has no O_TMPFILE (NFS), one removed right after it is created: gone when the context ends."""
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
    except OSError:
        name = f".kvmkit-scratch-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=folder_fd)
        os.unlink(name, dir_fd=folder_fd)
    try:
        os.ftruncate(fd, size)
        yield fd
    finally:
        with suppress(OSError):
            os.close(fd)


def raw_to_qcow2(raw_fd: int, qcow2_fd: int, what: str) -> None:
    """Convert the raw scratch into the (empty, staged) qcow2 file; `what` names the disk in an error."""
    argv = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", f"/dev/fd/{raw_fd}", f"/dev/fd/{qcow2_fd}"]
    try:
        done = subprocess.run(argv, pass_fds=(raw_fd, qcow2_fd), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem("qemu-img is missing: apt-get install qemu-utils") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise OperationFailed(f"{what}: qemu-img convert to qcow2 failed: {lines[-1] if lines else done.returncode}")
