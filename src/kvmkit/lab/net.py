"""The lab's host bridge for VMs with a virtio-net NIC (network benchmarks): one per lab folder.

Name and subnet derive from the lab folder, so several labs on one host never share a bridge. The host end has
.1; guests get addresses from `bench net --guest-ip` (the tiny guest runs no DHCP client). There is no vhost-net
on these hosts (LAB-FACTS): QEMU's userspace virtio-net carries the packets."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kvmkit.lab import procs


@dataclass(frozen=True)
class LabBridge:
    name: str
    host_ip: str
    prefix: int = 24

    def guest_ip(self, index: int) -> str:
        return self.host_ip.rsplit(".", 1)[0] + f".{10 + index}"


def bridge_for(lab_dir: Path) -> LabBridge:
    digest = hashlib.sha256(str(lab_dir.resolve()).encode()).digest()
    return LabBridge(name=f"kvbr{digest.hex()[:8]}", host_ip=f"10.{200 + digest[0] % 50}.{digest[1]}.1")


def _exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def ensure_bridge(lab_dir: Path) -> LabBridge:
    bridge = bridge_for(lab_dir)
    if not _exists(bridge.name):
        procs.run(["ip", "link", "add", bridge.name, "type", "bridge"], "ip link add bridge")
        procs.run(["ip", "addr", "add", f"{bridge.host_ip}/{bridge.prefix}", "dev", bridge.name], "ip addr add")
    procs.run(["ip", "link", "set", bridge.name, "up"], "ip link set up")
    return bridge


def remove_bridge(lab_dir: Path) -> bool:
    bridge = bridge_for(lab_dir)
    if not _exists(bridge.name):
        return False
    procs.run(["ip", "link", "del", bridge.name], "ip link del bridge")
    return True
