"""What a host check needs from libvirt, read once: versions, running domains with their live XML, the agent's
`guest-info`. Read-only; every libvirt error becomes data (a string) so one broken domain never hides the others."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import libvirt
import libvirt_qemu

from kvmkit.virt.connection import is_running


@dataclass(frozen=True)
class LibvirtInfo:
    uri: str
    lib_version: str  # libvirt library, "9.0.0"
    hypervisor_version: str  # QEMU, "7.2.0"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    xml: str


@dataclass(frozen=True)
class AgentInfo:
    """guest-info's answer, or why there was none."""

    answered: bool
    version: str = ""
    enabled_commands: frozenset[str] = field(default_factory=frozenset)
    error: str = ""


def _dotted(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def libvirt_info(conn: libvirt.virConnect) -> LibvirtInfo:
    try:
        hypervisor = _dotted(conn.getVersion())
    except libvirt.libvirtError:
        hypervisor = "unknown"
    return LibvirtInfo(conn.getURI(), _dotted(conn.getLibVersion()), hypervisor)


def running_domains(conn: libvirt.virConnect) -> list[tuple[DomainInfo, libvirt.virDomain]]:
    found = []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            if is_running(dom):
                found.append((DomainInfo(dom.name(), dom.XMLDesc(0)), dom))
        except libvirt.libvirtError:
            continue  # it went away between the listing and the read
    return found


def agent_info(dom: libvirt.virDomain, timeout_s: int = 2) -> AgentInfo:
    """`guest-info` through libvirt: one round trip proves the channel answers and lists what the agent allows."""
    try:
        reply = json.loads(libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-info"}', timeout_s, 0))
    except libvirt.libvirtError as exc:
        return AgentInfo(answered=False, error=exc.get_error_message() or str(exc))
    except ValueError as exc:
        return AgentInfo(answered=False, error=f"unreadable answer: {exc}")
    info = reply.get("return") if isinstance(reply, dict) else None
    if not isinstance(info, dict):
        return AgentInfo(answered=False, error="guest-info returned no object")
    commands = info.get("supported_commands")
    enabled = frozenset(
        str(c.get("name")) for c in commands if isinstance(c, dict) and c.get("enabled")
    ) if isinstance(commands, list) else frozenset()
    return AgentInfo(answered=True, version=str(info.get("version", "")), enabled_commands=enabled)
