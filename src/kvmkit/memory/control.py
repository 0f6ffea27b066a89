"""Acting on memory pressure through libvirt: balloon targets and memtune soft limits, live, journaled, reversible.

The backend is kvmkit.virt.tunables.LibvirtMemory (virDomainSetMemoryFlags for the balloon,
virDomainSetMemoryParameters for the soft limit); the journal, apply and revert are kvmkit.slo.journal's (intent
line before each change, outcome after, 0600; revert puts back only what still holds the value kvmkit set). What
is memory's own: a balloon counts as still holding kvmkit's target within BALLOON_SLACK_KIB.
"""

from __future__ import annotations

from kvmkit.slo.journal import Journal, Outcome, apply, revert
from kvmkit.slo.policy import Action
from kvmkit.virt.tunables import BALLOON_SLACK_KIB, UNLIMITED_KIB, LibvirtMemory

__all__ = ["BALLOON_SLACK_KIB", "UNLIMITED_KIB", "Action", "Journal", "LibvirtMemory", "Outcome", "apply", "holds",
           "revert"]  # fmt: skip


def holds(param: str, now: int | None, value: int) -> bool:
    """For revert: the parameter still holds what kvmkit set (a balloon within BALLOON_SLACK_KIB of its target)."""
    if now is None:
        return False
    return abs(now - value) <= BALLOON_SLACK_KIB if param == "balloon_kib" else now == value
