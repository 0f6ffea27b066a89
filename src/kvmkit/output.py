"""The CLI's one way to print records: JSON for scripts, rich tables for people.

Every `--json` goes through `to_jsonable`, which applies docs/cli.md's conventions at this edge, so the records
on disk (catalog rows, manifests, histories) keep their own strict, versioned formats:

* a timestamp is ISO 8601 with its time zone: a `datetime` (a naive one is local time, as kvmkit's clocks write
  it) and an epoch-seconds float under a timestamp key (`time`, `wall`, `ts`, `timestamp`, `created`, `*_at`);
* a disk record (a model registered with `disk_record`) names its disk `disk`, not `target` (which also names a
  backup target).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 150)  # pipes and CI logs get whole tables
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)

TIMESTAMP_KEYS = frozenset({"time", "wall", "ts", "timestamp", "created"})
# epoch seconds outside this window are not timestamps (a 0.0 placeholder, or a duration under a careless name)
_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 4_102_444_800  # 2000-01-01 … 2100-01-01
_DISK_RECORDS: set[type[BaseModel]] = set()


def disk_record(model: type[BaseModel]) -> type[BaseModel]:
    """Mark a model whose `target` field is a VM's disk (vda …): `--json` prints that field as `disk`."""
    if "target" not in model.model_fields:
        raise TypeError(f"{model.__name__} has no target field")
    _DISK_RECORDS.add(model)
    return model


def iso(moment: datetime) -> str:
    """ISO 8601 with the time zone; a naive datetime is local time (what `datetime.now()` gives)."""
    return (moment if moment.tzinfo is not None else moment.astimezone()).isoformat()


def is_timestamp_key(key: str) -> bool:
    return key in TIMESTAMP_KEYS or key.endswith("_at")


def _vm_key(fields: dict[str, Any]) -> dict[str, Any]:
    """One key for the VM everywhere: records that call it `domain` (libvirt's word) print it as `vm`."""
    if "domain" not in fields or "vm" in fields:
        return fields
    return {("vm" if k == "domain" else k): v for k, v in fields.items()}


def to_jsonable(obj: Any, key: str | None = None) -> Any:
    """Plain JSON values with the conventions above; `key` is the name the value is printed under."""
    if isinstance(obj, BaseModel):
        data = {name: getattr(obj, name) for name, field in type(obj).model_fields.items() if not field.exclude}
        data.update(obj.model_extra or {})  # a model that allows extra fields prints them, as model_dump does
        aliases = {name: field.alias for name, field in type(obj).model_fields.items() if field.alias}
        renamed = {aliases.get(k, k): v for k, v in data.items()}
        if type(obj) in _DISK_RECORDS:
            renamed = {("disk" if k == "target" else k): v for k, v in renamed.items()}
        return {k: to_jsonable(v, k) for k, v in _vm_key(renamed).items()}
    if isinstance(obj, datetime):
        return iso(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None  # as pydantic prints it: JSON has no NaN or Infinity
        if key is not None and is_timestamp_key(key) and _EPOCH_MIN <= obj <= _EPOCH_MAX:
            return iso(datetime.fromtimestamp(obj, UTC).astimezone())
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v, key) for v in obj]
    if isinstance(obj, Enum):
        return to_jsonable(obj.value, key)
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = _vm_key({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        return {k: to_jsonable(v, k) for k, v in fields.items()}
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    return str(obj)


def error_type(exc: BaseException) -> str:
    """`NotFound` → `not_found`: what a --json error carries in "type"."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in type(exc).__name__).lstrip("_")


def error_json(exc: BaseException, exit_code: int) -> dict:
    """A --json error: {"type", "message", "exit_code"} (the CLI prints it as {"error": …})."""
    return {"type": error_type(exc), "message": str(exc), "exit_code": exit_code}


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent)


def print_json(obj: Any) -> None:
    """One JSON document on stdout (an object, or a list of records)."""
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def print_json_line(obj: Any) -> None:
    """One record of a JSON Lines stream (a command that reports per interval says so in its help)."""
    sys.stdout.write(dumps(obj, indent=None) + "\n")
    sys.stdout.flush()


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, header_style="bold")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
