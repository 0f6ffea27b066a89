"""Sizes and durations as people type them ("256M", "1.5GiB", "2s") turned into integers, and back.

fio itself accepts such strings, but kvmkit needs the numbers too (space checks, working-set warnings,
precondition caps), so they are parsed once here and fio is handed plain byte counts.
"""

from __future__ import annotations

import re

from kvmkit.errors import InvalidInput

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Bytes from '4096', '64k', '256M', '1GiB', '2T'; binary multiples, as fio's default kb_base=1024."""
    match = _SIZE.match(text)
    if not match:
        raise InvalidInput(f"not a size: {text!r} (examples: 256M, 4G, 1TiB)")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * 1024 ** _POWERS[unit])
    if value <= 0:
        raise InvalidInput(f"size must be positive: {text!r}")
    return value


def format_size(n_bytes: float) -> str:
    """'256.0 MiB' — for messages and tables, never fed back to fio."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
