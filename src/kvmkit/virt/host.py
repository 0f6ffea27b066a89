"""Is a libvirt connection this host? File and block disks are paths on the hypervisor that runs the domain:
kvmkit reflinks, reverts and deletes them through this machine's filesystem, so it must run where they live.

A remote URI (`qemu+ssh://other/system`) names disks by paths that may exist here too (every host has a
`/var/lib/libvirt/images/vm1.qcow2`): acting on them would snapshot or revert the wrong disk. RBD (and other
network) disks are reached through their storage's own protocol and work from anywhere.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlparse

from kvmkit.errors import InvalidInput
from kvmkit.virt.disks import Disk

LOOPBACK = {"localhost", "localhost.localdomain", "127.0.0.1", "::1"}


class HostConnection(Protocol):
    def getURI(self) -> str: ...

    def getHostname(self) -> str: ...


def local_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    return {n.lower() for n in names if n} | LOOPBACK


def is_this_host(conn: HostConnection, here: set[str] | None = None) -> bool:
    """A URI without a host (`qemu:///system`, `test:///default`) is this host; otherwise the host libvirt says
    it runs on must be one of this machine's names (so `qemu+ssh://localhost/…` is local, another host is not)."""
    if not urlparse(conn.getURI()).hostname:
        return True
    here = here if here is not None else local_names()
    return conn.getHostname().lower() in here


def require_local(conn: HostConnection, disks: Iterable[Disk], here: set[str] | None = None) -> None:
    """Refuse, before anything is touched, to act on file or block disks of a domain on another host."""
    paths = [d for d in disks if d.kind in ("file", "block")]
    if paths and not is_this_host(conn, here):
        raise InvalidInput(
            f"disk {paths[0].target} ({paths[0].source}) is a path on {conn.getHostname()}, not on this host: "
            f"run kvmkit on {conn.getHostname()} (only RBD disks can be handled over a remote connection)")
