"""Opening libvirt and finding domains, with libvirt's errors re-wrapped into kvmkit's."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed
from kvmkit.virt import events
from kvmkit.virt.disks import Disk, parse_disks

# libvirt accepts almost anything as a name; kvmkit takes the portable subset every management stack uses.
VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # keep libvirt from printing to stderr itself


def check_vm_name(name: str) -> str:
    if not VM_NAME_RE.match(name):
        raise InvalidInput(
            f"invalid VM name {name!r}: use 1-128 of [A-Za-z0-9._+-], starting with a letter or digit"
        )
    return name


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
            raise NotFound(f"no VM named {name!r} on {conn.getURI()}{_close_names(conn, name)}") from None
        raise OperationFailed(f"looking up VM {name!r}: {exc.get_error_message()}") from None


def did_you_mean(name: str, candidates: list[str]) -> str:
    """"; did you mean 'web1' or 'web2'?" for the closest names (difflib), or "" when none is close."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    return f"; did you mean {' or '.join(quoted) if len(quoted) < 3 else ', '.join(quoted[:-1]) + ' or ' + quoted[-1]}?"


def _close_names(conn: libvirt.virConnect, name: str) -> str:
    try:
        return did_you_mean(name, [d.name() for d in conn.listAllDomains(0)])
    except libvirt.libvirtError:
        return ""  # the suggestion is a courtesy: the NotFound stands on its own


def live_disks(dom: libvirt.virDomain) -> list[Disk]:
    """Disks as the running domain sees them (or as defined, when it is shut off)."""
    return parse_disks(dom.XMLDesc(0))


def is_running(dom: libvirt.virDomain) -> bool:
    state, _ = dom.state()
    return state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED)
