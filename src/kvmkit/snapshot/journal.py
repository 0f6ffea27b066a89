"""Every piece of snapshot state that outlives a call, as typed models parsed strictly on the way back in.

The catalog's `journal` table holds multi-step operations other than create/delete (those are the snapshot rows
themselves): an overlay barrier between freeze and commit, and a revert between stage and commit. The engine and
revert write these models; `recover` reads them back through `parse_entry`, which refuses anything that does not
match (unknown op, missing or extra keys, wrong types, oversized rows) instead of guessing a default.

    JournalEntry(id, vm_uuid, payload)
     ├─ OverlayJournal   op "overlay": tag, barrier mode, the disks put on overlays
     └─ RevertJournal    op "revert": snapshot, phase (staging → staged → swapped), StagedRevert per disk
                           StagedRevert(target, driver, data: Staging)
                            ├─ FileStaging          <disk>.kvmkit-new / <disk>.kvmkit-old beside the disk
                            ├─ RbdCloneStaging      clone + renamed base image, the handle moves it causes
                            └─ RbdRollbackStaging   rollback_to_snap behind a safety snapshot

A storage driver with its own revert data subclasses `Staging` with a new `kind` (in its own module): the
subclass registers itself, so the journal parses it without this module knowing the driver.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, ValidationError

MAX_ENTRY_BYTES = 1 << 20  # a journal row is a few hundred bytes per disk: anything near this is not ours


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- revert staging ------------------------------------------------------------------------------------------------
class Staging(_Strict):
    """What a driver needs to swap, undo or commit one staged disk; a subclass per kind of staging."""

    kind: str
    registry: ClassVar[dict[str, type[Staging]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if isinstance(kind, str):
            Staging.registry[kind] = cls

    def moves(self) -> list[HandleMove]:
        """Snapshot handles this revert relocates (a revert by clone moves the older snapshots to the base image)."""
        return []


class HandleMove(_Strict):
    """Rows whose handles start with `old_prefix` now live under `new_prefix`."""

    old_prefix: str
    new_prefix: str


class FileStaging(Staging):
    kind: Literal["file"] = "file"
    source: str  # the disk file
    new: str  # the clone of the snapshot, renamed over the disk by swap
    old: str  # a hard link to the disk as it was, kept until commit


class RbdCloneStaging(Staging):
    kind: Literal["rbd-clone"] = "rbd-clone"
    pool: str
    image: str
    snap: str
    group: str | None = None
    new: str  # the clone, renamed to `image` by swap
    base: str  # the image's new name: it keeps the older snapshots and is the clone's parent
    handle_moves: list[HandleMove]

    def moves(self) -> list[HandleMove]:
        return list(self.handle_moves)


class RbdRollbackStaging(Staging):
    kind: Literal["rbd-rollback"] = "rbd-rollback"
    pool: str
    image: str
    snap: str
    group: str | None = None  # a group snapshot is rolled back once for the whole group
    safety: str  # the snapshot taken before the rollback: undo rolls back to it
    token: str  # one per revert, shared by its disks


def _staging(value: object) -> object:
    """A dict from the journal becomes the Staging subclass its `kind` names; anything else is refused."""
    if isinstance(value, Staging):
        return value
    if not isinstance(value, dict):
        raise ValueError("staging data must be an object")
    kind = value.get("kind")
    model = Staging.registry.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"unknown staging kind {kind!r}")
    return model.model_validate(value)


class StagedRevert(_Strict):
    """A revert prepared beside one disk, by the driver named here."""

    target: str
    driver: str
    data: Annotated[SerializeAsAny[Staging], BeforeValidator(_staging)]

    def __init__(self, target: str, driver: str, data: Staging) -> None:
        super().__init__(target=target, driver=driver, data=data)


# --- journal payloads ---------------------------------------------------------------------------------------------
class OverlayDisk(_Strict):
    target: str
    source: str
    format: str


class OverlayJournal(_Strict):
    op: Literal["overlay"] = "overlay"
    tag: str
    # Rows written before the mode was recorded parse as "qmp": its finish path commits libvirt-known overlays
    # first and then QMP ones, so it is right for either barrier (the old default "libvirt" was not).
    mode: Literal["qmp", "libvirt"] = "qmp"
    disks: list[OverlayDisk] = Field(max_length=256)


class RevertJournal(_Strict):
    op: Literal["revert"] = "revert"
    snapshot: str
    phase: Literal["staging", "staged", "swapped"]
    staged: list[StagedRevert] = Field(default_factory=list, max_length=256)


JournalPayload = OverlayJournal | RevertJournal
_PAYLOADS: dict[str, type[OverlayJournal] | type[RevertJournal]] = {"overlay": OverlayJournal,
                                                                     "revert": RevertJournal}


class JournalEntry(_Strict):
    """One journal row: `payload` is None when the row could not be parsed (`damage` says why)."""

    id: int
    vm_uuid: str
    op: str
    payload: OverlayJournal | RevertJournal | None = None
    damage: str | None = None


def dump_payload(payload: JournalPayload) -> str:
    return payload.model_dump_json(exclude={"op"})


def parse_entry(entry_id: int, vm_uuid: str, op: str, text: str) -> JournalEntry:
    """A row from the catalog as a typed entry; a row that is not exactly one of ours is marked damaged."""
    model = _PAYLOADS.get(op)
    if model is None:
        return JournalEntry(id=entry_id, vm_uuid=vm_uuid, op=op, damage=f"unknown journal operation {op!r}")
    if len(text) > MAX_ENTRY_BYTES:
        return JournalEntry(id=entry_id, vm_uuid=vm_uuid, op=op, damage=f"row of {len(text)} bytes")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        payload = model.model_validate({**data, "op": op})
    except (ValueError, ValidationError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        why = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}" if first else str(exc)
        return JournalEntry(id=entry_id, vm_uuid=vm_uuid, op=op, damage=why)
    return JournalEntry(id=entry_id, vm_uuid=vm_uuid, op=op, payload=payload)
