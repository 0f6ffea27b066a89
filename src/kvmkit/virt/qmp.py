"""QMP commands to a domain's QEMU through libvirt's monitor pass-through (libvirt_qemu), with typed errors.

    OperationFailed (kvmkit.errors)
     └─ QmpError            the command could not be passed to QEMU at all (libvirt refused: domain gone, …)
         └─ ExecuteError    QEMU answered with an error: `error_class` and `desc` kept as QEMU sent them

Callers decide on `error_class` (and on data they query), never on the wording of a message. Like qemu.qmp's
`ExecuteError`, the error keeps the command and QEMU's class; the libvirt error behind a QmpError is its cause.
"""

from __future__ import annotations

import json
from typing import Any

import libvirt
import libvirt_qemu

from kvmkit.errors import OperationFailed


class QmpError(OperationFailed):
    """A QMP command did not reach QEMU, or its reply was not QMP."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


class ExecuteError(QmpError):
    """QEMU refused the command: `error_class` is QMP's class (GenericError, CommandNotFound, DeviceNotFound …)."""

    def __init__(self, message: str, command: str, error_class: str, desc: str) -> None:
        super().__init__(message, command)
        self.error_class = error_class
        self.desc = desc


def execute(dom: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Run one QMP command and return its `return` value."""
    payload: dict[str, Any] = {"execute": command}
    if arguments is not None:
        payload["arguments"] = arguments
    name = _name(dom)
    try:
        text = libvirt_qemu.qemuMonitorCommand(dom, json.dumps(payload), 0)
    except libvirt.libvirtError as exc:
        raise QmpError(f"VM {name}: QMP {command}: {exc.get_error_message()}", command) from exc
    try:
        reply = json.loads(text)
    except ValueError as exc:
        raise QmpError(f"VM {name}: QMP {command}: the reply is not JSON", command) from exc
    if not isinstance(reply, dict):
        raise QmpError(f"VM {name}: QMP {command}: the reply is not a QMP object", command)
    error = reply.get("error")
    if error is not None:
        error_class = str(error.get("class", "")) if isinstance(error, dict) else ""
        desc = str(error.get("desc", "")) if isinstance(error, dict) else str(error)
        raise ExecuteError(f"VM {name}: QMP {command}: {desc}", command, error_class, desc)
    return reply.get("return")


def _name(dom: libvirt.virDomain) -> str:
    try:
        return dom.name()
    except libvirt.libvirtError:
        return "?"
