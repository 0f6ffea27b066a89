"""The meaning of libvirt's balloon figures for the memory collector: balloon size and the guest's own memory stats.

The figures come from one bulk call per reading (kvmkit.virt.balloons). The guest-side ones (available, unused,
major faults, swap in/out) are only there when the balloon driver runs in the guest *and* the stats period is set
(`<stats period='N'/>` or `virsh dommemstat --period N`); otherwise they are None, and `reasons` says which of the
two is missing. Guest stats are there when libvirt has a `balloon.last-update` for the domain.
"""

from __future__ import annotations

from typing import Any

from kvmkit.memory.model import BalloonReading
from kvmkit.virt.balloons import BalloonStats

KIB = 1024


def _kib(stats: dict[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return int(value) * KIB if isinstance(value, int) else None


def balloon_reading(stats: dict[str, Any], present: bool) -> BalloonReading:
    """Pure: one domain's `balloon.*` bulk stats (KiB) → a reading in bytes."""
    return BalloonReading(
        present=present,
        current_bytes=_kib(stats, "balloon.current") if present else None,
        maximum_bytes=_kib(stats, "balloon.maximum"),
        guest_available_bytes=_kib(stats, "balloon.usable"),
        guest_total_bytes=_kib(stats, "balloon.available"),
        guest_unused_bytes=_kib(stats, "balloon.unused"),
        guest_major_faults=stats.get("balloon.major_fault") if isinstance(stats.get("balloon.major_fault"), int)
        else None,
        guest_swap_in_bytes=_kib(stats, "balloon.swap_in"),
        guest_swap_out_bytes=_kib(stats, "balloon.swap_out"),
        guest_stats="balloon.last-update" in stats,
    )


def no_guest_stats_reason(reading: BalloonReading) -> str:
    if not reading.present:
        return "no balloon device (memballoon model='none')"
    if not reading.guest_stats:
        return "no guest stats: stats period off (virsh dommemstat DOMAIN --period 5 --live) or no driver in the guest"
    return "the guest's balloon driver does not report this stat"


class LibvirtBalloons(BalloonStats):
    """Balloon readings of every running domain, by name. Connection errors are the caller's to turn into reasons."""

    def read(self) -> dict[str, BalloonReading]:
        return {name: balloon_reading(stats, device) for name, stats, device in self.fetch()}
