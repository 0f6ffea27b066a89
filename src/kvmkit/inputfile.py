"""Reading a file a user points kvmkit at (a plan, a profile, advice JSON): a regular file of bounded size, or one
line saying why not. `path.read_text()` on /dev/zero fills memory, on a FIFO waits forever."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kvmkit.errors import InvalidInput, NotFound


def read_bounded(path: Path, max_bytes: int, what: str) -> bytes:
    """The file's bytes; NotFound when absent; InvalidInput when it is not a regular file or is too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: cannot open it ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {path} is not a regular file")
        if info.st_size > max_bytes:
            raise InvalidInput(f"{what} {path} has {info.st_size} bytes; at most {max_bytes} are read")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InvalidInput(f"{what} {path} grew past {max_bytes} bytes while read")
    return data


def read_text_bounded(path: Path, max_bytes: int, what: str) -> str:
    try:
        return read_bounded(path, max_bytes, what).decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} {path} is not UTF-8 text") from None
