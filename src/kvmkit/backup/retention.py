"""Retention rules (pure): which of a VM's backups or snapshots to keep, given times and a policy.

Rules as Proxmox/restic define them: keep the newest `keep_last`; then, per calendar hour/day/week (ISO week),
the newest item of each of the newest `keep_hourly`/`keep_daily`/`keep_weekly` periods that have one. An item
kept by any rule is kept. The newest item is always kept, so pruning never deletes the last good backup, and
an incremental's ancestors are kept whenever it is (`with_ancestors`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kvmkit.errors import InvalidInput


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InvalidInput(f"--{name.replace('_', '-')} must be a whole number ≥ 0, not {value!r}")

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_hourly or self.keep_daily or self.keep_weekly)


@dataclass(frozen=True)
class Item:
    name: str
    created: datetime
    parent: str | None = None


PERIODS: dict[str, Callable[[datetime], tuple]] = {
    "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar()[:2]),
}


def keep(items: Sequence[Item], policy: RetentionPolicy) -> dict[str, str]:
    """name → the first rule that keeps it; items not in the result may be deleted."""
    if not items:
        return {}
    newest_first = sorted(items, key=lambda i: (i.created, i.name), reverse=True)
    reasons: dict[str, str] = {}
    for item in newest_first[: policy.keep_last]:
        reasons.setdefault(item.name, "last")
    for rule, period_of in PERIODS.items():
        wanted = getattr(policy, rule)
        seen: set[tuple] = set()
        for item in newest_first:
            if len(seen) >= wanted:
                break
            period = period_of(item.created)
            if period not in seen:
                seen.add(period)
                reasons.setdefault(item.name, rule.removeprefix("keep_"))
    reasons.setdefault(newest_first[0].name, "newest")
    return reasons


def with_ancestors(kept: dict[str, str], items: Sequence[Item]) -> dict[str, str]:
    """Add the parents (transitively) of every kept item: an incremental is useless without its chain."""
    by_name = {i.name: i for i in items}
    out = dict(kept)
    for name in list(kept):
        parent = by_name[name].parent if name in by_name else None
        while parent is not None and parent in by_name and parent not in out:
            out[parent] = f"parent of {name}"
            parent = by_name[parent].parent
    return out


def dependants(name: str, items: Sequence[Item]) -> list[str]:
    """Every item whose chain passes through `name` (children, grandchildren …), oldest first."""
    children: dict[str, list[Item]] = {}
    for item in items:
        if item.parent is not None:
            children.setdefault(item.parent, []).append(item)
    out: list[Item] = []
    stack = list(children.get(name, []))
    while stack:
        item = stack.pop()
        out.append(item)
        stack.extend(children.get(item.name, []))
    return [i.name for i in sorted(out, key=lambda i: (i.created, i.name))]


def item_time(name: str, fallback: datetime) -> datetime:
    """Scheduled snapshots carry the schedule's clock in their name (sched-YYYYmmdd-HHMMSS); others their
    creation time. Retention then follows the schedule's clock, which is what a fake clock in tests drives."""
    if name.startswith(SCHEDULED_PREFIX):
        try:
            return datetime.strptime(name[len(SCHEDULED_PREFIX):], SCHEDULED_FORMAT)
        except ValueError:
            pass
    return fallback


SCHEDULED_PREFIX = "sched-"
SCHEDULED_FORMAT = "%Y%m%d-%H%M%S"
