"""A VM's end of `bench net`: its NIC address set through the agent (argument lists, no shell), its QEMU process
found in /proc, and the virtio-net backend named from the host (/dev/vhost-net) and the NIC's definition; and a
pair of VMs, server in one guest and client in the other, for the east-west path."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from kvmkit.bench.netpaths import GuestPath, Server, check_cidr, check_ip, guest_backend, qemu_cpu_seconds, qemu_pid
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


def _ready(dom: Domain) -> None:
    if not is_running(dom):
        raise InvalidInput(f"VM {dom.name()} is not running")
    _wait_agent(dom)


def parse_pair(text: str) -> tuple[str, str]:
    """`--pair SERVER,CLIENT` → the two VM names."""
    parts = text.split(",")
    if len(parts) != 2 or not all(parts):
        raise InvalidInput(f"--pair {text!r}: give SERVER_VM,CLIENT_VM")
    return parts[0], parts[1]


def parse_set_ip(text: str) -> tuple[str, str]:
    """`--set-ip VM=ADDRESS/PREFIX` → (VM, checked address/prefix)."""
    name, sep, cidr = text.partition("=")
    if not sep or not name:
        raise InvalidInput(f"--set-ip {text!r}: give VM=ADDRESS/PREFIX")
    return name, check_cidr(cidr, f"--set-ip {name}")


def set_address(dom: Domain, cidr: str, iface: str, what: str = "--guest-ip") -> None:
    """Put an address on the guest's NIC (guests without DHCP, like the lab's)."""
    cidr = check_cidr(cidr, what)
    if not iface.isalnum():
        raise InvalidInput(f"--iface {iface!r}: letters and digits only")
    _ready(dom)
    _exec(dom, ["/bin/ip", "link", "set", iface, "up"])
    _exec(dom, ["/bin/ip", "addr", "replace", cidr, "dev", iface])


def guest_path(dom: Domain, host_ip: str, guest_cidr: str | None, iface: str = "eth0") -> GuestPath:
    host_ip = check_ip(host_ip, "--host-ip")
    _ready(dom)
    if guest_cidr is not None:
        set_address(dom, guest_cidr, iface)

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


SERVER_START_S = 60.0  # a TCG guest on a loaded host takes seconds to exec and bind


def _listening(dom: Domain, port: int) -> bool:
    """busybox netstat in the guest: is anything listening on this TCP port?"""
    out = agent.guest_exec(dom, ["/bin/netstat", "-ltn"], timeout_s=30).stdout.decode(errors="replace")
    return any(line.split()[3].endswith(f":{port}") for line in out.splitlines()
               if line.startswith("tcp") and len(line.split()) > 3)


class GuestServer:
    """A server process in a guest (guest-exec, no shell), returned once its port listens; stop() kills it."""

    def __init__(self, dom: Domain, argv: list[str], port: int, timeout_s: float = SERVER_START_S) -> None:
        self.dom, self.argv = dom, argv
        self.pid = agent.guest_spawn(dom, argv)
        deadline = time.monotonic() + timeout_s
        while not _listening(dom, port):
            done = agent.guest_exec_status(dom, self.pid)
            if done is not None:
                raise OperationFailed(f"VM {dom.name()}: {argv[0]} exited ({done.exit_code}) before listening: "
                                      f"{(done.stderr or done.stdout).decode(errors='replace').strip()[:200]}")
            if time.monotonic() > deadline:
                self.stop()
                raise OperationFailed(f"VM {dom.name()}: {argv[0]} did not listen on port {port} within "
                                      f"{timeout_s:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            if agent.guest_exec_status(self.dom, self.pid) is None:
                agent.guest_exec(self.dom, ["/bin/kill", "-9", str(self.pid)], timeout_s=30)
                agent.guest_exec_status(self.dom, self.pid)  # reaped: the agent forgets the finished process
        except (OperationFailed, EnvironmentProblem):
            pass  # the guest went away: nothing left to stop


@dataclass
class GuestPairPath:
    """Guest ↔ guest: server in `server_dom`, client in `client_dom`, over the bridge both NICs sit on."""

    server_dom: Domain
    client_dom: Domain
    server_ip: str
    backend: str
    qemus: list[int | None]

    @property
    def name(self) -> str:
        return f"guest {self.client_dom.name()} ↔ guest {self.server_dom.name()} (bridge, virtio-net both ends)"

    def serve(self, argv: list[str], marker: str, port: int) -> Server:
        return GuestServer(self.server_dom, argv, port)

    def client(self, argv: list[str], timeout_s: float) -> str:
        result = agent.guest_exec(self.client_dom, argv, timeout_s=timeout_s)
        return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")

    def cpu_seconds(self) -> float | None:
        return qemu_cpu_seconds(self.qemus)


def pair_path(server: Domain, client: Domain, iface: str = "eth0") -> GuestPairPath:
    """The server guest's address is what its agent reports on `iface` (DHCP, or `--set-ip` before)."""
    if server.name() == client.name():
        raise InvalidInput(f"--pair {server.name()},{client.name()}: two different VMs")
    for dom in (server, client):
        _ready(dom)
    addresses = agent.guest_ipv4(server, iface)
    if not addresses:
        raise InvalidInput(f"VM {server.name()} reports no IPv4 address on {iface}: give it one with "
                           f"--set-ip {server.name()}=ADDRESS/PREFIX")
    vhost = os.path.exists(VHOST_NET)
    backends = {guest_backend(vhost, _nic_driver(d.XMLDesc(0))) for d in (server, client)}
    return GuestPairPath(server_dom=server, client_dom=client, server_ip=addresses[0],
                         backend=" + ".join(sorted(backends)), qemus=[qemu_pid(server.name()), qemu_pid(client.name())])
