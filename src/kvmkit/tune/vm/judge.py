"""Judge one definition for a goal: every rule, each finding given the XML its fix changes (pure)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvmkit.errors import InvalidInput
from kvmkit.tune.model import Status
from kvmkit.tune.vm import domain as domain_mod
from kvmkit.tune.vm.edits import applied, before_after
from kvmkit.tune.vm.finding import GOALS, VmFinding
from kvmkit.tune.vm.host import HostFacts
from kvmkit.tune.vm.owners import owner
from kvmkit.tune.vm.rules_cpu import RULES
from kvmkit.tune.vm.rules_io import judge_devices

TO_FIX = (Status.FAIL, Status.WARN)


@dataclass(frozen=True)
class VmReport:
    vm: str
    uuid: str
    goal: str
    owner: str | None  # nova | cloudstack | None: an owned VM gets the orchestrator's knob, never a redefine
    running: bool
    findings: tuple[VmFinding, ...]

    @property
    def to_fix(self) -> list[VmFinding]:
        return [f for f in self.findings if f.status in TO_FIX]

    @property
    def worst(self) -> Status:
        statuses = {f.status for f in self.findings}
        return next((s for s in (Status.FAIL, Status.WARN) if s in statuses), Status.PASS)


def check_goal(goal: str) -> str:
    if goal not in GOALS:
        raise InvalidInput(f"unknown goal {goal!r}: use one of {', '.join(GOALS)}")
    return goal


def judge(xml: str, host: HostFacts, goal: str, running: bool = False) -> VmReport:
    check_goal(goal)
    d = domain_mod.parse(xml)
    findings = [f for rule in RULES for f in rule(d, host, goal)] + judge_devices(d, host, goal)
    shown = []
    for f in findings:
        if f.edits and f.status in TO_FIX:
            before, after = before_after(xml, f.edits)
            f = dataclasses.replace(f, fix_before=before, fix_after=after)
        shown.append(f)
    return VmReport(d.name, d.uuid, goal, owner(d), running, tuple(shown))


def fixed_xml(xml: str, host: HostFacts, goal: str, only: set[str] | None = None,
              rounds: int = 3) -> tuple[str, list[VmFinding]]:
    """The definition with every automatic fix made (or only the named checks), and the findings it fixed.

    One fix can call for another (an iothread added for a disk must then be pinned with the vCPUs), so the
    judge runs again on the fixed definition, a bounded number of rounds, until nothing automatic is left."""
    fixed: dict[str, VmFinding] = {}
    for _ in range(rounds):
        report = judge(xml, host, goal)
        chosen = [f for f in report.to_fix if f.auto and f.edits and (not only or f.check in only)]
        if not chosen:
            break
        xml = applied(xml, [e for f in chosen for e in f.edits])
        for f in chosen:
            fixed.setdefault(f.check, f)
    return xml, list(fixed.values())
