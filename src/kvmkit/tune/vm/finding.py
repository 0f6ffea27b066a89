"""A finding about one VM definition: what is there, what the goal wants, why, from where, and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmkit.tune.model import Status
from kvmkit.tune.vm.edits import XmlEdit

GOALS = ("latency", "throughput", "per-core", "per-watt", "balanced")


@dataclass(frozen=True)
class VmFinding:
    check: str  # cpu.model, disk.cache:vda, nic.multiqueue:52:54:00:…
    area: str  # cpu | memory | storage | network | clock
    status: Status
    current: str
    expected: str
    why: str
    source: str
    edits: tuple[XmlEdit, ...] = ()
    knobs: dict[str, str] = field(default_factory=dict)  # orchestrator → its own setting for this fix
    auto: bool = True  # `apply` may make the edits (False: shown for a person to do, e.g. a bus change)
    fix_before: str = ""  # the XML the edits change, before and after (filled by the judge)
    fix_after: str = ""


def severity(weights: dict[str, str], goal: str) -> Status | None:
    """The status a failed check gets for this goal: 'F' → FAIL, 'W' → WARN, '-' → not judged (None)."""
    mark = weights.get(goal, "-")
    return {"F": Status.FAIL, "W": Status.WARN}.get(mark)


def weights(latency: str, throughput: str, per_core: str, per_watt: str, balanced: str) -> dict[str, str]:
    return dict(zip(GOALS, (latency, throughput, per_core, per_watt, balanced), strict=True))
