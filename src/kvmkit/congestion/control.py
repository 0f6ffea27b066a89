"""Acting on congestion: libvirt's live scheduler parameters (cpu_shares, vcpu_period, vcpu_quota), every change
journaled and reversible.

The backend is kvmkit.virt.tunables.LibvirtScheduler; the journal, apply and revert are kvmkit.slo.journal's
(intent line before each change, outcome after, 0600; revert puts back only what still holds the value kvmkit
set). What is congestion's own: a vcpu_quota that had no value before is put back as −1, libvirt's "no limit".
"""

from __future__ import annotations

from collections.abc import Callable

from kvmkit.errors import OperationFailed
from kvmkit.slo import journal as slo_journal
from kvmkit.slo.journal import Backend, Journal, Outcome, apply
from kvmkit.slo.policy import Action
from kvmkit.virt.tunables import LibvirtScheduler

__all__ = ["Action", "Journal", "LibvirtScheduler", "OperationFailed", "Outcome", "apply", "revert"]

UNLIMITED_QUOTA = -1  # libvirt: a negative vcpu_quota means no limit


def revert(
    backend: Backend,
    journal: Journal,
    dry_run: bool = False,
    holds: Callable[[str, int | None, int], bool] | None = None,
) -> list[Outcome]:
    """Undo every applied change, newest first, where the parameter still holds what kvmkit set."""
    return slo_journal.revert(backend, journal, dry_run, holds, unset={"vcpu_quota": UNLIMITED_QUOTA})
