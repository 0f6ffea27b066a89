"""Pure comparison of two hosts' readings: which settings differ, for fleet drift and before/after checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from kvmkit.tune.checks import CHECKS_BY_ID
from kvmkit.tune.model import Reading


class Difference(BaseModel):
    model_config = ConfigDict(frozen=True)
    check: str
    title: str
    a: str
    b: str
    note: str = ""  # the UNKNOWN reason when one side could not be read


def _shown(reading: Reading | None) -> str:
    if reading is None:
        return "not read"
    return "UNKNOWN" if reading.unknown is not None else reading.display()


def diff(a: list[Reading], b: list[Reading]) -> list[Difference]:
    """Every check whose values differ between A and B (per instance, not only the one-cell summary)."""
    by_a = {r.check: r for r in a}
    by_b = {r.check: r for r in b}
    found = []
    for check_id, check in CHECKS_BY_ID.items():
        ra, rb = by_a.get(check_id), by_b.get(check_id)
        same = (
            ra is not None and rb is not None and ra.unknown is None and rb.unknown is None and ra.values == rb.values
        ) or (ra is not None and rb is not None and ra.unknown is not None and rb.unknown is not None)
        if same:
            continue
        note = next((r.unknown for r in (ra, rb) if r is not None and r.unknown is not None), "")
        found.append(Difference(check=check_id, title=check.title, a=_shown(ra), b=_shown(rb), note=note))
    return found
