"""Acting on congestion: scheduler parameters through libvirt, every change journaled and reversible.

Only libvirt's scheduler API is used (cpu_shares, vcpu_period, vcpu_quota; live, not persistent), never cgroup
files behind libvirt's back: libvirt owns those cgroups and would undo or fight such writes.

The journal (JSON lines, mode 0600) gets an `intent` line before each change and a `done`/`failed` line after
it, so a crash in between still leaves a trace; `revert` puts back the recorded old values, newest first, and
only where the parameter still holds the value kvmkit set (someone else's later change is left alone).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from kvmkit.congestion.policy import Action
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed

log = logging.getLogger(__name__)
UNLIMITED_QUOTA = -1  # libvirt: a negative vcpu_quota means no limit


class SchedulerBackend(Protocol):
    def parameters(self, domain: str) -> dict[str, int]: ...
    def set_parameter(self, domain: str, param: str, value: int) -> None: ...
    def domains(self) -> list[str]: ...


class LibvirtScheduler:
    """The libvirt side: live scheduler parameters of running domains."""

    def __init__(self, uri: str) -> None:
        try:
            import libvirt
        except ImportError:
            raise EnvironmentProblem("python libvirt bindings are not installed (python3-libvirt)") from None
        self._libvirt = libvirt
        # libvirt prints every error to stderr by default; ours are re-raised as one-line KvmkitErrors
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            message = exc.get_error_message()
            raise EnvironmentProblem(f"cannot connect to libvirt at {uri}: {message}") from None

    def _domain(self, name: str) -> Any:
        try:
            return self._conn.lookupByName(name)
        except self._libvirt.libvirtError:
            raise NotFound(f"no libvirt domain named {name!r}") from None

    def domains(self) -> list[str]:
        active = self._conn.listAllDomains(self._libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return sorted(d.name() for d in active)

    def parameters(self, domain: str) -> dict[str, int]:
        try:
            params = self._domain(domain).schedulerParameters()
        except self._libvirt.libvirtError as exc:
            raise OperationFailed(f"{domain}: cannot read scheduler parameters: {exc}") from None
        return {k: int(v) for k, v in params.items() if isinstance(v, int)}

    def set_parameter(self, domain: str, param: str, value: int) -> None:
        flags = self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            self._domain(domain).setSchedulerParametersFlags({param: value}, flags)
        except self._libvirt.libvirtError as exc:
            message = exc.get_error_message()
            raise OperationFailed(f"{domain}: cannot set {param}={value}: {message}") from None

    def close(self) -> None:
        self._conn.close()


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

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise InvalidInput(f"{self.path}:{number}: not a journal line") from None
        return out

    def applied(self) -> list[dict[str, Any]]:
        """Intents whose last state is `done`, oldest first: what revert would undo."""
        last: dict[str, dict[str, Any]] = {}
        intents: dict[str, dict[str, Any]] = {}
        for record in self.records():
            if record.get("state") == "intent":
                intents[record["id"]] = record
            last[record["id"]] = record
        return [intents[i] for i in intents if last[i].get("state") == "done"]


def apply(actions: Iterable[Action], backend: SchedulerBackend, journal: Journal | None) -> list[Outcome]:
    """Carry out the actions (journal None: a dry run, nothing changes). Failures are recorded, not raised."""
    outcomes: list[Outcome] = []
    for action in actions:
        outcome = Outcome(id=uuid.uuid4().hex[:12], state="planned", **asdict(action))
        if journal is None:
            outcomes.append(outcome)
            continue
        journal.write({"id": outcome.id, "state": "intent", **asdict(action)})
        try:
            backend.set_parameter(action.domain, action.param, action.new)
        except (OperationFailed, NotFound) as exc:
            outcome.state, outcome.detail = "failed", str(exc)
        else:
            outcome.state = "done"
        journal.write({"id": outcome.id, "state": outcome.state, "detail": outcome.detail})
        log.info(
            "congestion action %s",
            outcome.state,
            extra={"vm": action.domain, "param": action.param, "old": action.old, "new": action.new},
        )
        outcomes.append(outcome)
    return outcomes


def revert(
    backend: SchedulerBackend,
    journal: Journal,
    dry_run: bool = False,
    holds: Callable[[str, int | None, int], bool] | None = None,
) -> list[Outcome]:
    """Undo every applied change, newest first, where the parameter still holds what kvmkit set.

    `holds(param, now, set_value)` decides "still what kvmkit set" (default: equal); memory's balloon, which the
    guest reaches only approximately, passes a tolerance.
    """
    holds = holds or (lambda _param, now, value: now == value)
    outcomes: list[Outcome] = []
    for record in reversed(journal.applied()):
        old = record["old"]
        if old is None and record["param"] == "vcpu_quota":
            old = UNLIMITED_QUOTA
        outcome = Outcome(
            id=record["id"],
            domain=record["domain"],
            param=record["param"],
            old=record["new"],
            new=old if old is not None else record["new"],
            reason=f"revert: {record['reason']}",
            state="planned",
        )
        try:
            now = backend.parameters(record["domain"]).get(record["param"])
        except (NotFound, OperationFailed) as exc:
            outcome.state, outcome.detail = "skipped", str(exc)
        else:
            if old is None:
                outcome.state, outcome.detail = "skipped", "no previous value was recorded"
            elif not holds(record["param"], now, record["new"]):
                outcome.state, outcome.detail = "skipped", f"changed since (now {now}): left alone"
        if outcome.state == "planned" and not dry_run:
            try:
                backend.set_parameter(record["domain"], record["param"], outcome.new)
            except (OperationFailed, NotFound) as exc:
                outcome.state, outcome.detail = "failed", str(exc)
            else:
                outcome.state = "reverted"
        if not dry_run and outcome.state in ("reverted", "skipped"):
            journal.write({"id": record["id"], "state": f"revert-{outcome.state}", "detail": outcome.detail})
        outcomes.append(outcome)
    return outcomes
