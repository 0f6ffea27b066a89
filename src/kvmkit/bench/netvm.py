"""A VM's end of `bench net`: its NIC address set through the agent (argument lists, no shell), its QEMU process
found in /proc, and the virtio-net backend named from the host (/dev/vhost-net) and the NIC's definition."""

from __future__ import annotations

import os
import time
from xml.etree import ElementTree as ET

from kvmkit.bench.netpaths import GuestPath, check_cidr, check_ip, guest_backend, qemu_pid
from kvmkit.errors import EnvironmentProblem, InvalidInput, OperationFailed
from kvmkit.virt import agent
from kvmkit.virt.connection import Domain, is_running

VHOST_NET = "/dev/vhost-net"
AGENT_WAIT_S = 120.0


def _nic_driver(xml: str) -> str:
    nic = ET.fromstring(xml).find("devices/interface")
    if nic is None:
        raise InvalidInput("the VM has no network interface")
    driver = nic.find("driver")
    return driver.get("name", "") if driver is not None else ""


def _exec(dom: Domain, argv: list[str]) -> None:
    result = agent.guest_exec(dom, argv, timeout_s=30)
    if result.exit_code != 0:
        raise OperationFailed(f"VM {dom.name()}: {' '.join(argv)} failed: "
                              f"{result.stderr.decode(errors='replace').strip()[:200]}")


def _wait_agent(dom: Domain, timeout_s: float = AGENT_WAIT_S) -> None:
    """A loaded host can keep the agent from answering for a while (libvirt: "not available for now")."""
    deadline = time.monotonic() + timeout_s
    while not agent.ping(dom):
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"VM {dom.name()}: its guest agent did not answer within {timeout_s:.0f} s")
        time.sleep(1.0)  # the agent channel gives no "ready" event


def guest_path(dom: Domain, host_ip: str, guest_cidr: str | None, iface: str = "eth0") -> GuestPath:
    if not is_running(dom):
        raise InvalidInput(f"VM {dom.name()} is not running")
    host_ip = check_ip(host_ip, "--host-ip")
    _wait_agent(dom)
    if guest_cidr is not None:
        cidr = check_cidr(guest_cidr, "--guest-ip")
        if not iface.isalnum():
            raise InvalidInput(f"--iface {iface!r}: letters and digits only")
        _exec(dom, ["/bin/ip", "link", "set", iface, "up"])
        _exec(dom, ["/bin/ip", "addr", "replace", cidr, "dev", iface])

    def exec_fn(argv: list[str], timeout_s: float) -> agent.ExecResult:
        return agent.guest_exec(dom, argv, timeout_s=timeout_s)

    return GuestPath(vm=dom.name(), exec_fn=exec_fn, server_ip=host_ip,
                     backend=guest_backend(os.path.exists(VHOST_NET), _nic_driver(dom.XMLDesc(0))),
                     qemu=qemu_pid(dom.name()))


def notes_for(dom: Domain) -> list[str]:
    notes = []
    if ET.fromstring(dom.XMLDesc(0)).get("type") == "qemu":
        notes.append(f"{dom.name()} runs under TCG (emulated vCPUs): its figures are bound by CPU emulation, and "
                     "its QEMU CPU per Gbit/s includes that emulation")
    if not os.path.exists(VHOST_NET):
        notes.append("no /dev/vhost-net on this host: QEMU's userspace virtio-net ran, vhost-net could not be "
                     "compared")
    return notes
