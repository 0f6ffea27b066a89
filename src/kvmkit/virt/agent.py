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


def guest_spawn(dom: libvirt.virDomain, argv: list[str]) -> int:
    """Start argv in the guest and return its guest pid at once (guest-exec does not wait); its output is kept
    by the agent until it exits (`guest_exec_status`)."""
    started = _command(dom, "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
    pid = started.get("pid") if isinstance(started, dict) else None
    if not isinstance(pid, int):
        raise OperationFailed(f"VM {dom.name()}: guest-exec of {argv[0]} answered no pid")
    return pid


def guest_exec_status(dom: libvirt.virDomain, pid: int) -> ExecResult | None:
    """What a spawned guest process left, or None while it still runs."""
    status = _command(dom, "guest-exec-status", {"pid": pid})
    if not isinstance(status, dict) or not status.get("exited"):
        return None
    return ExecResult(
        exit_code=int(status.get("exitcode", -1)),
        stdout=base64.b64decode(status.get("out-data", "")),
        stderr=base64.b64decode(status.get("err-data", "")),
    )


def guest_exec(dom: libvirt.virDomain, argv: list[str], timeout_s: float = 60.0) -> ExecResult:
    """Run argv in the guest and wait for it; the guest's own shell is only used if argv asks for it."""
    pid = guest_spawn(dom, argv)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while (result := guest_exec_status(dom, pid)) is None:
        if time.monotonic() > deadline:
            raise OperationFailed(f"VM {dom.name()}: {argv[0]} did not finish within {timeout_s:.0f} s")
        time.sleep(delay)  # the agent has no completion event; back off to keep the agent channel quiet
        delay = min(delay * 2, 0.2)
    return result


MAX_INTERFACES = 64  # guest-network-get-interfaces is the guest's answer: bounded before it is walked


def guest_ipv4(dom: libvirt.virDomain, iface: str) -> list[str]:
    """The IPv4 addresses the guest reports on `iface` (guest-network-get-interfaces), each checked as an address."""
    import ipaddress

    answer = _command(dom, "guest-network-get-interfaces")
    found: list[str] = []
    for nic in answer[:MAX_INTERFACES] if isinstance(answer, list) else []:
        if not isinstance(nic, dict) or nic.get("name") != iface:
            continue
        for addr in (nic.get("ip-addresses") or [])[:MAX_INTERFACES]:
            if isinstance(addr, dict) and addr.get("ip-address-type") == "ipv4":
                try:
                    found.append(str(ipaddress.IPv4Address(str(addr.get("ip-address")))))
                except ValueError:
                    continue
    return found


def guest_shell(dom: libvirt.virDomain, script: str, timeout_s: float = 60.0) -> str:
    """Run a fixed script (kvmkit's own, never user input) with the guest's busybox sh; raise on failure."""
    result = guest_exec(dom, ["/bin/sh", "-c", script], timeout_s=timeout_s)
    if result.exit_code != 0:
        raise OperationFailed(
            f"VM {dom.name()}: guest command failed ({result.exit_code}): "
            f"{result.stderr.decode(errors='replace')[:200]}"
        )
    return result.stdout.decode(errors="replace")
