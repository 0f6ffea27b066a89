"""Resolve once, act on what you opened: path operations in folders kvmkit does not own (storage pools, NFS exports,
mount points), done relative to a directory fd so a symlink planted between a check and an act cannot steer root.

A folder is opened once (`O_DIRECTORY|O_NOFOLLOW`); every later create, open, unlink, chown and chmod names an
entry of that fd (`dir_fd=`, `O_NOFOLLOW`, `O_EXCL` for new files) or works on an open file's fd (`fchown`,
`fchmod`), never the path again. Whoever can write the folder can still rename entries under us, but can no longer
make us follow a link out of it or overwrite a file we did not create.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@contextmanager
def opened_dir(path: Path | str) -> Iterator[int]:
    """The folder as an fd (the last component must not be a symlink); closed when the block ends."""
    fd = os.open(path, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def create_new(dir_fd: int, name: str, mode: int = 0o600, *, readable: bool = False) -> int:
    """A new file `name` in the folder, never an existing one or a link's target (O_EXCL|O_NOFOLLOW)."""
    _check_name(name)
    flags = NEW_FLAGS & ~os.O_WRONLY | os.O_RDWR if readable else NEW_FLAGS
    return os.open(name, flags, mode, dir_fd=dir_fd)


def open_regular(dir_fd: int, name: str, flags: int = READ_FLAGS) -> int:
    """An existing regular file of the folder, opened without following a link and without blocking on a FIFO;
    anything else (a device, a FIFO, a socket, a folder) is refused after the open, by what was opened."""
    _check_name(name)
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{name} is not a regular file")
    return fd


def unlink(dir_fd: int, name: str) -> None:
    """Remove the entry `name` of the folder if present (a link is removed, never followed)."""
    _check_name(name)
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    _check_name(name)
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def copy_owner_and_mode(fd: int, like: os.stat_result) -> None:
    """Give an open file the owner and permission bits of another, by fd (no path to re-resolve)."""
    os.fchown(fd, like.st_uid, like.st_gid)
    os.fchmod(fd, stat.S_IMODE(like.st_mode))


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")


def private_dirs(path: Path) -> Path:
    """`path` and every missing folder above it, each made 0700 whatever the umask (Path.mkdir(parents=True)
    makes the parents with the default mode: 0755 under cron's umask, and a state or log folder others can list)."""
    missing: list[Path] = []
    here = Path(path)
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made by a concurrent job meanwhile
            pass
    return path


def write_private(path: Path, data: bytes) -> None:
    """A state file of kvmkit's own, whole or not at all: written 0600 beside it (O_NOFOLLOW), fsynced, renamed
    over it; its folder made 0700."""
    private_dirs(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_private(path: Path, limit: int, others: int = 0o077) -> bytes:
    """A state file read back as untrusted: a regular file (O_NOFOLLOW|O_NONBLOCK, checked on the fd) of at most
    `limit` bytes, owned by root or us, that nobody else can read or write (`others`: the mode bits refused; 0o022
    for a record that may be read but not written by others). FileNotFoundError when absent; any other refusal is
    a ValueError saying why (the caller words it for its file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise ValueError(f"not a regular file of at most {limit} bytes")
        if info.st_mode & others or info.st_uid not in (0, os.geteuid()):
            raise ValueError(f"{'writable' if others == 0o022 else 'readable or writable'} by others, or owned by "
                             f"uid {info.st_uid}")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)
