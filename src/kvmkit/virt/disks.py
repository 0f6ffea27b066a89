"""Domain XML → typed disk records (pure: no libvirt calls), so drivers decide from data, not from XML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from xml.etree import ElementTree as ET


@dataclass(frozen=True)
class Disk:
    """One writable disk of a domain, as the live XML describes it."""

    target: str  # vda, sdb …: stable within a domain, the key of a disk in every snapshot record
    kind: Literal["file", "block", "network"]
    format: str  # raw, qcow2 …
    source: str  # file path, device path, or "pool/image" for RBD
    protocol: str | None = None  # rbd, nbd … for network disks
    hosts: tuple[tuple[str, int], ...] = ()
    config_file: str | None = None  # <source><config file=…> for RBD
    auth_username: str | None = None
    auth_secret_uuid: str | None = None  # <auth><secret type='ceph' uuid=…>: the libvirt secret holding the key
    has_backing_chain: bool = False  # an external overlay sits on top of another image

    @property
    def rbd_pool_image(self) -> tuple[str, str]:
        pool, _, image = self.source.partition("/")
        return pool, image


def parse_disks(xml: str) -> list[Disk]:
    """Writable disks with a source; CD-ROMs, read-only and source-less disks carry no state worth snapshotting."""
    root = ET.fromstring(xml)
    disks: list[Disk] = []
    for el in root.findall("./devices/disk"):
        if el.get("device", "disk") != "disk" or el.find("readonly") is not None:
            continue
        target = el.find("target")
        source = el.find("source")
        driver = el.find("driver")
        if target is None or source is None:
            continue
        kind = el.get("type", "file")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        backing = el.find("backingStore")
        has_backing = backing is not None and backing.find("source") is not None
        dev = target.get("dev", "")
        if kind == "file" and source.get("file"):
            disks.append(Disk(dev, "file", fmt, source.get("file", ""), has_backing_chain=has_backing))
        elif kind == "block" and source.get("dev"):
            disks.append(Disk(dev, "block", fmt, source.get("dev", ""), has_backing_chain=has_backing))
        elif kind == "network" and source.get("name"):
            hosts = tuple((h.get("name", ""), int(h.get("port", "6789"))) for h in source.findall("host"))
            config = source.find("config")
            auth = el.find("auth") if el.find("auth") is not None else source.find("auth")
            secret = auth.find("secret") if auth is not None else None
            disks.append(Disk(
                target.get("dev", ""), "network", fmt, source.get("name", ""),
                protocol=source.get("protocol"), hosts=hosts,
                config_file=config.get("file") if config is not None else None,
                auth_username=auth.get("username") if auth is not None else None,
                auth_secret_uuid=secret.get("uuid") if secret is not None else None,
                has_backing_chain=has_backing,
            ))
    return disks
