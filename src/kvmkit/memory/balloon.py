"""The libvirt edge of the collector: balloon size and the guest's own memory stats, one bulk call per reading.

`virConnectGetAllDomainStats(BALLOON)` returns every running domain's balloon figures in one RPC (instead of a
QMP round trip per domain). The guest-side figures (available, unused, major faults, swap in/out) are only
there when the balloon driver runs in the guest *and* the stats period is set (`<stats period='N'/>` or `virsh
dommemstat --period N`); otherwise they are None, and `reasons` says which of the two is missing. Whether a
domain has a balloon device at all is read from its XML once per domain (cached by UUID); guest stats are
there when libvirt has a `balloon.last-update` for the domain.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from kvmkit.memory.model import BalloonReading

KIB = 1024


def _kib(stats: dict[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return int(value) * KIB if isinstance(value, int) else None


def has_balloon(xml: str) -> bool:
    """Whether a domain's XML has a balloon device (libvirt adds a virtio one unless model='none')."""
    balloon = ET.fromstring(xml).find("./devices/memballoon")
    return balloon is not None and balloon.get("model", "none") != "none"


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


class LibvirtBalloons:
    """Balloon readings of every running domain, by name. Connection errors are the caller's to turn into reasons."""

    def __init__(self, uri: str) -> None:
        import libvirt

        self._libvirt = libvirt
        self.uri = uri
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self._conn = libvirt.open(uri)
        self._devices: dict[str, bool] = {}  # UUID → has a balloon device, for live domains

    def _stats(self) -> list[tuple[Any, dict[str, Any]]]:
        """The bulk call; a connection that broke (libvirtd restarted under a long-lived exporter) is reopened
        once, and if that fails too the error goes to the caller (the figures become nulls with its text)."""
        lv = self._libvirt
        flags = lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        try:
            return self._conn.getAllDomainStats(lv.VIR_DOMAIN_STATS_BALLOON, flags)
        except lv.libvirtError:
            if self._alive():
                raise
        self._conn = lv.open(self.uri)
        return self._conn.getAllDomainStats(lv.VIR_DOMAIN_STATS_BALLOON, flags)

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except self._libvirt.libvirtError:  # a closed or broken connection pointer
            return False

    def read(self) -> dict[str, BalloonReading]:
        lv = self._libvirt
        out: dict[str, BalloonReading] = {}
        live: set[str] = set()
        for dom, stats in self._stats():
            uuid = dom.UUIDString()
            live.add(uuid)
            device = self._devices.get(uuid)
            if device is None:
                try:
                    device = has_balloon(dom.XMLDesc(0))
                except lv.libvirtError:
                    continue  # stopped between the two calls
                self._devices[uuid] = device
            out[dom.name()] = balloon_reading(stats, device)
        self._devices = {k: v for k, v in self._devices.items() if k in live}
        return out

    def close(self) -> None:
        self._conn.close()
