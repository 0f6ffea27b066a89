"""Domain XML for lab VMs: a pure function from a VM spec to libvirt XML (no libvirt calls here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

from kvmkit.lab.guest import GuestImage

AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class FileDisk:
    path: Path
    format: Literal["raw", "qcow2"] = "raw"


@dataclass(frozen=True)
class RbdDisk:
    pool: str
    image: str
    monitor_host: str
    monitor_port: int
    conf: Path | None  # None: as CloudStack and Nova define them, monitors from <host> and no ceph.conf
    auth_username: str | None = None  # with secret_uuid: the key lives in a libvirt secret (cephx)
    secret_uuid: str | None = None


@dataclass(frozen=True)
class BlockDisk:
    """A host block device given to the VM as is (e.g. a StorPool volume's /dev/storpool/<name> link)."""

    path: Path


@dataclass(frozen=True)
class VmSpec:
    name: str
    image: GuestImage
    console_log: Path
    disks: tuple[FileDisk | RbdDisk | BlockDisk, ...] = field(default_factory=tuple)
    memory_mib: int = 128
    vcpus: int = 1
    domain_type: Literal["qemu", "kvm"] = "qemu"  # TCG unless KVM really works
    bridge: str | None = None  # a virtio-net NIC on this host bridge (lab/net.py)


def disk_target(index: int) -> str:
    """vda, vdb, … vdz, vdaa …: the name the guest sees too (virtio PCI order follows the target order)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return f"vd{letters}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: VmSpec) -> str:
    dom = ET.Element("domain", type=spec.domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(spec.image.kernel))
    _sub(os_el, "initrd", str(spec.image.initrd))
    _sub(os_el, "cmdline", spec.image.cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    if spec.domain_type == "qemu":
        # A small translation cache keeps each TCG guest near 200 MB RSS (default is 1 GiB of cache).
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", "32", unit="MiB")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    for index, disk in enumerate(spec.disks):
        target = disk_target(index)
        if isinstance(disk, FileDisk):
            el = _sub(devices, "disk", type="file", device="disk")
            _sub(el, "driver", name="qemu", type=disk.format, cache="none", io="native", discard="unmap")
            _sub(el, "source", file=str(disk.path))
        elif isinstance(disk, BlockDisk):
            el = _sub(devices, "disk", type="block", device="disk")
            _sub(el, "driver", name="qemu", type="raw", cache="none", io="native", discard="unmap")
            _sub(el, "source", dev=str(disk.path))
        else:
            el = _sub(devices, "disk", type="network", device="disk")
            _sub(el, "driver", name="qemu", type="raw", cache="none", discard="unmap")
            src = _sub(el, "source", protocol="rbd", name=f"{disk.pool}/{disk.image}")
            _sub(src, "host", name=disk.monitor_host, port=str(disk.monitor_port))
            if disk.conf is not None:
                _sub(src, "config", file=str(disk.conf))
            if disk.auth_username and disk.secret_uuid:
                auth = _sub(el, "auth", username=disk.auth_username)
                _sub(auth, "secret", type="ceph", uuid=disk.secret_uuid)
        _sub(el, "target", dev=target, bus="virtio")
        _sub(el, "serial", f"kvmkit-{target}")
    if spec.bridge is not None:
        nic = _sub(devices, "interface", type="bridge")
        _sub(nic, "source", bridge=spec.bridge)
        _sub(nic, "model", type="virtio")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.console_log))
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="file")
    _sub(console, "source", path=str(spec.console_log))
    _sub(console, "target", type="serial", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
    _sub(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")
