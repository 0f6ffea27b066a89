"""Acting on an SLO: apply planned actions over a backend, every change journaled and reversible.

The backend is the effectful edge (libvirt's live scheduler parameters for congestion, balloon and memtune for
memory: kvmkit.virt.tunables); this module only orders the calls and keeps the record. The journal (JSON lines,
mode 0600) gets an `intent` line before each change and a `done`/`failed` line after it, so a crash in between
still leaves a trace; `revert` puts back the recorded old values, newest first, and only where the parameter
still holds the value kvmkit set (someone else's later change is left alone).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed
from kvmkit.slo.policy import Action

log = logging.getLogger(__name__)
MAX_LINE = 64 << 10  # a journal line is a few hundred bytes; a longer one is not ours


class Intent(BaseModel):
    """An `intent` line: what is about to change (written before the change; what revert undoes once done)."""

    model_config = ConfigDict(extra="forbid")
    time: float
    id: str
    state: Literal["intent"]
    domain: str
    param: str
    old: int | None
    new: int
    reason: str


class Result(BaseModel):
    """What became of the intent with the same id: applied, failed, or later reverted or left alone."""

    model_config = ConfigDict(extra="forbid")
    time: float
    id: str
    state: Literal["done", "failed", "revert-reverted", "revert-skipped"]
    detail: str = ""


# Read back strictly: the journal is state that outlives a call, and a file on disk is untrusted.
_LINE: TypeAdapter[Intent | Result] = TypeAdapter(Intent | Result)


class Backend(Protocol):
    def parameters(self, domain: str) -> dict[str, int]: ...
    def set_parameter(self, domain: str, param: str, value: int) -> None: ...
    def domains(self) -> list[str]: ...


class Outcome(BaseModel):
    id: str
    domain: str
    param: str
    old: int | None
    new: int
    reason: str
    state: str  # planned (dry run) | done | failed | reverted | skipped
    detail: str = ""


class Journal:
    """Append-only JSON lines; created 0600 because it names domains and what was done to them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            where = f"the action journal {self.path}"
            raise EnvironmentProblem(f"cannot write {where}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (json.dumps({"time": time.time(), **record}) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def lines(self) -> list[Intent | Result]:
        """Every line, parsed strictly; a bad one is one line of InvalidInput naming its number."""
        if not self.path.exists():
            return []
        if not self.path.is_file():
            raise InvalidInput(f"the action journal {self.path} is not a regular file")
        out: list[Intent | Result] = []
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(iter(lambda: lines.readline(MAX_LINE), ""), 1):
                if not line.strip():
                    continue
                try:
                    out.append(_LINE.validate_json(line))
                except ValidationError:
                    raise InvalidInput(f"{self.path}:{number}: not a journal line") from None
        return out

    def records(self) -> list[dict[str, Any]]:
        """The lines as written (JSON objects), for people and tests reading the journal."""
        return [line.model_dump() for line in self.lines()]

    def applied(self) -> list[Intent]:
        """Intents whose last state is `done`, oldest first: what revert would undo."""
        last: dict[str, Intent | Result] = {}
        intents: dict[str, Intent] = {}
        for line in self.lines():
            if isinstance(line, Intent):
                intents[line.id] = line
            last[line.id] = line
        return [intents[i] for i in intents if last[i].state == "done"]


def _set(backend: Backend, outcome: Outcome, value: int, success: str) -> None:
    """Set the outcome's parameter; the outcome records `success`, or the failure in one line (never raised)."""
    try:
        backend.set_parameter(outcome.domain, outcome.param, value)
    except (OperationFailed, NotFound) as exc:
        outcome.state, outcome.detail = "failed", str(exc)
    else:
        outcome.state = success


def apply(actions: Iterable[Action], backend: Backend, journal: Journal | None) -> list[Outcome]:
    """Carry out the actions (journal None: a dry run, nothing changes). Failures are recorded, not raised."""
    outcomes: list[Outcome] = []
    for action in actions:
        outcome = Outcome(id=uuid.uuid4().hex[:12], state="planned", **asdict(action))
        if journal is None:
            outcomes.append(outcome)
            continue
        journal.write({"id": outcome.id, "state": "intent", **asdict(action)})
        _set(backend, outcome, action.new, "done")
        journal.write({"id": outcome.id, "state": outcome.state, "detail": outcome.detail})
        log.info(
            "action %s",
            outcome.state,
            extra={"vm": action.domain, "param": action.param, "old": action.old, "new": action.new},
        )
        outcomes.append(outcome)
    return outcomes


def revert(
    backend: Backend,
    journal: Journal,
    dry_run: bool = False,
    holds: Callable[[str, int | None, int], bool] | None = None,
    unset: Mapping[str, int] | None = None,
) -> list[Outcome]:
    """Undo every applied change, newest first, where the parameter still holds what kvmkit set.

    `holds(param, now, set_value)` decides "still what kvmkit set" (default: equal); memory's balloon, which the
    guest reaches only approximately, passes a tolerance. `unset[param]` is the value that means "no value"
    for a parameter that had none before (congestion: vcpu_quota −1, no limit); without it such a change is
    skipped.
    """
    holds = holds or (lambda _param, now, value: now == value)
    outcomes: list[Outcome] = []
    for record in reversed(journal.applied()):
        old = record.old
        if old is None and unset and record.param in unset:
            old = unset[record.param]
        outcome = Outcome(
            id=record.id,
            domain=record.domain,
            param=record.param,
            old=record.new,
            new=old if old is not None else record.new,
            reason=f"revert: {record.reason}",
            state="planned",
        )
        try:
            now = backend.parameters(record.domain).get(record.param)
        except (NotFound, OperationFailed) as exc:
            outcome.state, outcome.detail = "skipped", str(exc)
        else:
            if old is None:
                outcome.state, outcome.detail = "skipped", "no previous value was recorded"
            elif not holds(record.param, now, record.new):
                outcome.state, outcome.detail = "skipped", f"changed since (now {now}): left alone"
        if outcome.state == "planned" and not dry_run:
            _set(backend, outcome, outcome.new, "reverted")
        if not dry_run and outcome.state in ("reverted", "skipped"):
            journal.write({"id": record.id, "state": f"revert-{outcome.state}", "detail": outcome.detail})
        outcomes.append(outcome)
    return outcomes
