"""The guest agent through libvirt: ping, freeze/thaw, status and guest-exec.

freeze/thaw go through virDomainFSFreeze/FSThaw (libvirt tracks the frozen state); ping, status and exec use
qemuAgentCommand, because libvirt has no typed API for them.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import libvirt
import libvirt_qemu

from kvmkit.errors import Conflict, EnvironmentProblem, OperationFailed

NO_AGENT_HINT = (
    "install qemu-guest-agent in the guest and give the domain a channel "
    "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>, "
    "or use --crash-consistent"
)


def _command(dom: libvirt.virDomain, execute: str, arguments: dict | None = None, timeout_s: int = 5) -> object:
    payload = {"execute": execute}
    if arguments is not None:
        payload["arguments"] = arguments
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(payload), timeout_s, 0)
    except libvirt.libvirtError as exc:
        raise _wrap(dom, execute, exc) from exc
    return json.loads(reply).get("return")


def _wrap(dom: libvirt.virDomain, what: str, exc: libvirt.libvirtError) -> Exception:
    msg = exc.get_error_message()
    if exc.get_error_code() == libvirt.VIR_ERR_AGENT_UNRESPONSIVE or "not connected" in msg:
        return EnvironmentProblem(f"VM {dom.name()}: guest agent not answering ({msg}); {NO_AGENT_HINT}")
    if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in msg:
        return Conflict(f"VM {dom.name()} is not running")
    return OperationFailed(f"VM {dom.name()}: agent {what} failed: {msg}")


def ping(dom: libvirt.virDomain, timeout_s: int = 2) -> bool:
    try:
        _command(dom, "guest-ping", timeout_s=timeout_s)
        return True
    except (EnvironmentProblem, OperationFailed, Conflict):
        return False


def freeze(dom: libvirt.virDomain) -> int:
    """Freeze every guest filesystem; returns how many froze."""
    try:
        return dom.fsFreeze()
    except libvirt.libvirtError as exc:
        raise _wrap(dom, "fsfreeze", exc) from exc


def thaw(dom: libvirt.virDomain) -> int:
    try:
        return dom.fsThaw()
    except libvirt.libvirtError as exc:
        raise _wrap(dom, "fsthaw", exc) from exc


def freeze_status(dom: libvirt.virDomain, timeout_s: int = 2) -> str:
    return str(_command(dom, "guest-fsfreeze-status", timeout_s=timeout_s))


class QemuGuestAgent:
    """The guest agent as the snapshot engine sees it (the default of its context; a test passes its own)."""

    def ping(self, dom: libvirt.virDomain, timeout_s: int = 2) -> bool:
        return ping(dom, timeout_s)

    def freeze(self, dom: libvirt.virDomain) -> int:
        return freeze(dom)

    def thaw(self, dom: libvirt.virDomain) -> int:
        return thaw(dom)

    def freeze_status(self, dom: libvirt.virDomain) -> str:
        return freeze_status(dom)


def thaw_or_resume(dom: libvirt.virDomain, action: str, retry_s: float = 30.0) -> str:
    """The watchdog's one act: thaw (or resume) the guest, retrying while the agent is still busy; says how it went."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            if action == "resume":
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
            else:
                dom.fsThaw()
            return "ok"
        except libvirt.libvirtError as exc:
            if not dom.isActive():
                return "domain gone"
            if time.monotonic() > deadline:
                return f"failed: {exc.get_error_message()}"
            time.sleep(0.2)  # the agent may still be busy with the freeze this thaw must follow


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


def guest_exec(dom: libvirt.virDomain, argv: list[str], timeout_s: float = 60.0) -> ExecResult:
    """Run argv in the guest and wait for it; the guest's own shell is only used if argv asks for it."""
    started = _command(dom, "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
    pid = started["pid"]  # type: ignore[index]
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        status = _command(dom, "guest-exec-status", {"pid": pid})
        if status.get("exited"):  # type: ignore[union-attr]
            break
        if time.monotonic() > deadline:
            raise OperationFailed(f"VM {dom.name()}: {argv[0]} did not finish within {timeout_s:.0f} s")
        time.sleep(delay)  # the agent has no completion event; back off to keep the agent channel quiet
        delay = min(delay * 2, 0.2)
    return ExecResult(
        exit_code=int(status.get("exitcode", -1)),  # type: ignore[union-attr]
        stdout=base64.b64decode(status.get("out-data", "")),  # type: ignore[union-attr]
        stderr=base64.b64decode(status.get("err-data", "")),  # type: ignore[union-attr]
    )


def guest_shell(dom: libvirt.virDomain, script: str, timeout_s: float = 60.0) -> str:
    """Run a fixed script (kvmkit's own, never user input) with the guest's busybox sh; raise on failure."""
    result = guest_exec(dom, ["/bin/sh", "-c", script], timeout_s=timeout_s)
    if result.exit_code != 0:
        raise OperationFailed(
            f"VM {dom.name()}: guest command failed ({result.exit_code}): "
            f"{result.stderr.decode(errors='replace')[:200]}"
        )
    return result.stdout.decode(errors="replace")
