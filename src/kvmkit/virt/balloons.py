"""Balloon figures of every running domain in one bulk call: the libvirt edge of `kvmkit memory`'s collector.

`virConnectGetAllDomainStats(BALLOON)` returns every running domain's `balloon.*` stats (KiB) in one RPC instead
of a QMP round trip per domain. Whether a domain has a balloon device at all is read from its XML once per domain
(cached by UUID, pruned to the running domains). What the figures mean is the collector's business
(kvmkit.memory.balloon); this module only fetches them. Connection errors are raised as libvirt raises them: the
collector turns them into null reasons, never into a failed reading.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET


def has_balloon(xml: str) -> bool:
    """Whether a domain's XML has a balloon device (libvirt adds a virtio one unless model='none')."""
    balloon = ET.fromstring(xml).find("./devices/memballoon")
    return balloon is not None and balloon.get("model", "none") != "none"


class BalloonStats:
    """One connection, kept by a long-lived exporter; `fetch()` → [(domain name, balloon.* stats, has a device)]."""

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

    def fetch(self) -> list[tuple[str, dict[str, Any], bool]]:
        lv = self._libvirt
        out: list[tuple[str, dict[str, Any], bool]] = []
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
            out.append((dom.name(), stats, device))
        self._devices = {k: v for k, v in self._devices.items() if k in live}
        return out

    def close(self) -> None:
        self._conn.close()
