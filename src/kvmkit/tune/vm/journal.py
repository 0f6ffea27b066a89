"""The journal of `tune vm apply`: the definition before and after, written (0600, exclusively) before libvirt is
asked to redefine, so `tune vm rollback` can put the old one back. Read back as untrusted: strict model, size-bounded,
a regular file owned by us and writable by nobody else."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmkit import fsat
from kvmkit.errors import Conflict, InvalidInput, NotFound
from kvmkit.names import VM_NAME_RE
from kvmkit.tune.vm.domain import MAX_XML_BYTES

JOURNAL_FORMAT = 1
MAX_JOURNAL_BYTES = 3 * MAX_XML_BYTES


class VmJournal(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: int = JOURNAL_FORMAT
    created: str = Field(max_length=64)
    vm: str = Field(pattern=VM_NAME_RE.pattern)
    uuid: str = Field(pattern=r"^[0-9a-fA-F-]{32,36}$")
    goal: str = Field(max_length=32)
    checks: list[str] = Field(max_length=10_000)
    original_xml: str = Field(max_length=MAX_XML_BYTES)
    applied_xml: str = Field(default="", max_length=MAX_XML_BYTES)  # as libvirt read it back after the define


def path_for(folder: Path, vm_uuid: str) -> Path:
    return folder / f"{vm_uuid}.json"


def save(record: VmJournal, path: Path, exclusive: bool) -> None:
    if exclusive and path.exists():
        raise Conflict(f"VM {record.vm}: an earlier `tune vm apply` was not rolled back ({path}): "
                       f"run `kvmkit tune vm rollback {record.vm}` first")
    fsat.write_private(path, record.model_dump_json(indent=1).encode())


def load(path: Path) -> VmJournal:
    try:
        data = fsat.read_private(path, MAX_JOURNAL_BYTES)
    except FileNotFoundError:
        raise NotFound(f"no tune vm journal at {path}: nothing to roll back") from None
    except OSError as exc:
        raise InvalidInput(f"journal {path}: cannot open it ({exc.strerror})") from None
    except ValueError as exc:
        raise InvalidInput(f"journal {path} is {exc}: refused") from None
    try:
        return VmJournal.model_validate(json.loads(data))
    except (ValueError, ValidationError, RecursionError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise InvalidInput(f"journal {path} is not a kvmkit tune vm journal: {first}") from None
