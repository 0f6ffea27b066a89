"""PlanProblem: bad plan input found by the pure core, carrying *where* in the input it is.

The core knows the location as a path of keys and indexes (`("chassis", 2, "max_w")`); only the loader
knows the file and its lines, so the CLI edge turns the path into `file:line: key: message`.
"""

from __future__ import annotations

from kvmkit.errors import InvalidInput

Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    """("chassis", 2, "max_w") -> "chassis[2].max_w": how a person would name the key."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class PlanProblem(InvalidInput):
    """Invalid plan input at `loc`; str() is a one-line message without the file name."""

    def __init__(self, loc: Loc, message: str) -> None:
        self.loc = tuple(loc)
        self.message = message
        super().__init__(f"{dotted(self.loc)}: {message}")
