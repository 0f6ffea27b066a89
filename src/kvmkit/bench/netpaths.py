"""The paths `bench net` measures, each a server on one end and a client on the other, both argument lists:

- NetnsPath: two network namespaces joined by a veth pair, the kernel's own path and the reference (anchor);
- GuestPath: server on the host's bridge address, client in the guest through qemu-guest-agent's guest-exec,
  packets through the VM's virtio-net NIC and its backend (vhost-net, or QEMU's userspace virtio-net when the
  host has no /dev/vhost-net). Its CPU is the QEMU process's (every thread) plus any vhost-<pid> kernel threads.
- GuestPairPath (netvm.py): server in one guest, client in another, both through the agent: packets leave one
  virtio-net NIC, cross the host's bridge and enter the other — what east-west traffic between VMs pays.
"""

from __future__ import annotations

import ipaddress
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvmkit.errors import EnvironmentProblem, InvalidInput, OperationFailed
from kvmkit.sampling.qemu import domain_from_cmdline

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Server(Protocol):
    """A benchmark server that is listening; stop() ends it."""

    def stop(self) -> None: ...


class NetPath(Protocol):
    """What `bench net` needs of a path: a server started on one end, a client run on the other."""

    name: str
    backend: str
    server_ip: str

    def serve(self, argv: list[str], marker: str, port: int) -> Server: ...
    def client(self, argv: list[str], timeout_s: float) -> str: ...
    def cpu_seconds(self) -> float | None: ...


class HostServer:
    """A server process on the host, returned once it printed its listening marker."""

    def __init__(self, argv: list[str], marker: str) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        wait_listening(self.proc, marker)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (every thread) in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read(4096).decode().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_busy_seconds() -> float:
    """CPU seconds the whole host spent busy (not idle or iowait), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        first = f.readline().decode().split()
    values = [int(v) for v in first[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def wait_listening(proc: subprocess.Popen, marker: str, timeout_s: float = 10.0) -> None:
    """Return once the server printed `marker` (iperf3: 'Server listening'); fail if it exits or stays silent."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = b""
    while marker.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            raise OperationFailed(f"{proc.args[0] if isinstance(proc.args, list) else 'server'} did not start: "
                                  f"{seen.decode(errors='replace')[-200:]}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            seen += chunk


class NetnsPath:
    """Two namespaces, veth between them: what the host kernel alone does (no VM, no virtio)."""

    name = "host netns ↔ netns (veth)"
    backend = "kernel veth (no VM)"

    def __init__(self, tag: str) -> None:
        self.ns_server, self.ns_client = f"kvmkit-{tag}-s", f"kvmkit-{tag}-c"
        self.server_ip, self.client_ip = "10.254.254.1", "10.254.254.2"

    def cpu_seconds(self) -> float | None:
        return None  # both ends are host processes: the host's busy time says it all

    def serve(self, argv: list[str], marker: str, port: int) -> Server:
        return HostServer(["ip", "netns", "exec", self.ns_server, *argv], marker)

    def client(self, argv: list[str], timeout_s: float) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.ns_client, *argv], capture_output=True, text=True,
                              timeout=timeout_s, cwd="/")
        return done.stdout + done.stderr

    @contextmanager
    def up(self) -> Iterator[NetnsPath]:
        steps = [["ip", "netns", "add", self.ns_server], ["ip", "netns", "add", self.ns_client],
                 ["ip", "link", "add", "kvk-s", "netns", self.ns_server, "type", "veth", "peer", "name", "kvk-c",
                  "netns", self.ns_client],
                 ["ip", "-n", self.ns_server, "addr", "add", f"{self.server_ip}/30", "dev", "kvk-s"],
                 ["ip", "-n", self.ns_client, "addr", "add", f"{self.client_ip}/30", "dev", "kvk-c"],
                 ["ip", "-n", self.ns_server, "link", "set", "kvk-s", "up"],
                 ["ip", "-n", self.ns_client, "link", "set", "kvk-c", "up"],
                 ["ip", "-n", self.ns_server, "link", "set", "lo", "up"],
                 ["ip", "-n", self.ns_client, "link", "set", "lo", "up"]]
        try:
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, cwd="/")
                if done.returncode != 0:
                    raise EnvironmentProblem(f"{' '.join(step[:4])}: {done.stderr.strip()[:200]}")
            yield self
        finally:
            for ns in (self.ns_server, self.ns_client):  # deleting a namespace deletes its end of the veth
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, cwd="/")


def qemu_pid(vm: str, proc: Path = Path("/proc")) -> int | None:
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()[:65536].split(b"\0")
        except OSError:
            continue
        if domain_from_cmdline([a.decode(errors="replace") for a in argv]) == vm:
            return int(entry.name)
    return None


def vhost_threads(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """vhost-net's kernel workers for this QEMU ('vhost-<pid>'); none when QEMU does virtio-net itself."""
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == f"vhost-{pid}":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def guest_backend(vhost_net_present: bool, nic_driver: str) -> str:
    if vhost_net_present and nic_driver != "qemu":
        return "vhost-net (in-kernel virtio-net)"
    why = "no /dev/vhost-net on this host" if not vhost_net_present else "driver name='qemu'"
    return f"QEMU userspace virtio-net ({why})"


def check_ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidInput(f"{what}: {text!r} is not an IP address") from None


def check_cidr(text: str, what: str) -> str:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidInput(f"{what}: {text!r} is not an address/prefix like 10.0.0.2/24") from None
    return str(iface)


@dataclass
class GuestPath:
    """Host (server, on the bridge address) ↔ guest (client, through the agent)."""

    vm: str
    exec_fn: Callable[[list[str], float], Any]  # (argv, timeout_s) -> kvmkit.virt.agent.ExecResult
    server_ip: str
    backend: str
    qemu: int | None

    @property
    def name(self) -> str:
        return f"guest {self.vm} ↔ host (bridge, virtio-net)"

    def serve(self, argv: list[str], marker: str, port: int) -> Server:
        return HostServer(argv, marker)

    def client(self, argv: list[str], timeout_s: float) -> str:
        result = self.exec_fn(argv, timeout_s)
        return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")

    def cpu_seconds(self) -> float | None:
        return qemu_cpu_seconds([self.qemu])


def qemu_cpu_seconds(pids: list[int | None]) -> float | None:
    """CPU seconds of these QEMU processes (every thread) and their vhost workers; None if one is unknown."""
    if any(pid is None for pid in pids):
        return None
    total = 0.0
    for pid in pids:
        assert pid is not None
        total += _proc_cpu_s(pid) + sum(_proc_cpu_s(tid) for tid in vhost_threads(pid))
    return total
