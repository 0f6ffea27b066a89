"""Opening libvirt and finding domains, with libvirt's errors re-wrapped into kvmkit's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from kvmkit.errors import EnvironmentProblem, NotFound, OperationFailed
from kvmkit.names import VM_NAME_RE, check_vm_name  # noqa: F401 (one rule for names, in kvmkit.names)
from kvmkit.virt import events
from kvmkit.virt.disks import Disk, parse_disks

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # keep libvirt from printing to stderr itself


def open_connection(uri: str) -> libvirt.virConnect:
    events.ensure_loop()  # block-job waits need events, and libvirt only sends them to later connections
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise EnvironmentProblem(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from None


@contextmanager
def connection(uri: str) -> Iterator[libvirt.virConnect]:
    conn = open_connection(uri)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    check_vm_name(name)
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(f"no VM named {name!r} on {conn.getURI()}") from None
        raise OperationFailed(f"looking up VM {name!r}: {exc.get_error_message()}") from None


def live_disks(dom: libvirt.virDomain) -> list[Disk]:
    """Disks as the running domain sees them (or as defined, when it is shut off)."""
    return parse_disks(dom.XMLDesc(0))


def is_running(dom: libvirt.virDomain) -> bool:
    state, _ = dom.state()
    return state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED)
