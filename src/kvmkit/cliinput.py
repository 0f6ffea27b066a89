"""Files a user names on the command line: the one check every command makes first, so the same mistake gets
the same exit code everywhere (docs/cli.md: a missing input file is "not found", exit 3)."""

from __future__ import annotations

import stat
from pathlib import Path

from kvmkit.errors import InvalidInput, NotFound


def existing_file(path: Path, what: str) -> Path:
    """`path` when it is a regular file; NotFound when absent; InvalidInput when it is something else."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{what} {path} is not a regular file")
    return path


def existing_folder(path: Path, what: str) -> Path:
    """`path` when it is a folder; NotFound when absent; InvalidInput when it is something else."""
    if not path.exists():
        raise NotFound(f"{what} {path} does not exist")
    if not path.is_dir():
        raise InvalidInput(f"{what} {path} is not a folder")
    return path
