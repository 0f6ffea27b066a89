"""Pinning is the part of a VM's definition libvirt changes on a running VM without a restart: vCPU, emulator and
iothread pins (virDomainPinVcpuFlags, virDomainPinEmulator, virDomainPinIOThread with VIR_DOMAIN_AFFECT_LIVE — what
`virsh vcpupin --live` calls). `tune vm apply` takes those live as well as into the persistent definition, and
`rollback` puts the live pins back too; everything else waits for the VM's next start.

The plan (which pins change) is pure; `take_live` is the libvirt edge."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from kvmkit.errors import OperationFailed
from kvmkit.tune.vm.edits import XmlEdit
from kvmkit.tune.vm.host import parse_cpuset
from kvmkit.virt.connection import Domain, host_cpu_count, pin_live

log = logging.getLogger(__name__)
PIN_TAGS = ("vcpupin", "emulatorpin", "iothreadpin")


@dataclass(frozen=True)
class Pins:
    vcpus: dict[int, str] = field(default_factory=dict)  # vCPU → cpuset text
    emulator: str = ""
    iothreads: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LivePin:
    kind: str  # vcpu | emulator | iothread
    number: int  # vCPU or iothread id; 0 for the emulator
    cpuset: str  # "" = every host CPU (what an unpinned thread may use)

    def __str__(self) -> str:
        what = "emulator" if self.kind == "emulator" else f"{self.kind} {self.number}"
        return f"{what} → {self.cpuset or 'any CPU'}"


def pins_of(xml: str) -> Pins:
    tune = ET.fromstring(xml).find("cputune")
    if tune is None:
        return Pins()

    def numbered(tag: str, key: str) -> dict[int, str]:
        out = {}
        for el in tune.findall(tag):
            number = el.get(key, "")
            if number.isdigit():
                out[int(number)] = el.get("cpuset", "")
        return out

    emulator = tune.find("emulatorpin")
    return Pins(vcpus=numbered("vcpupin", "vcpu"), emulator=emulator.get("cpuset", "") if emulator is not None else "",
                iothreads=numbered("iothreadpin", "iothread"))


def plan(before: Pins, after: Pins) -> list[LivePin]:
    """The pins to set so a running VM pinned as `before` is pinned as `after`; a pin `after` drops goes back to
    every CPU."""
    out = []
    for number in sorted(before.vcpus.keys() | after.vcpus.keys()):
        if before.vcpus.get(number) != after.vcpus.get(number):
            out.append(LivePin("vcpu", number, after.vcpus.get(number, "")))
    if before.emulator != after.emulator:
        out.append(LivePin("emulator", 0, after.emulator))
    for number in sorted(before.iothreads.keys() | after.iothreads.keys()):
        if before.iothreads.get(number) != after.iothreads.get(number):
            out.append(LivePin("iothread", number, after.iothreads.get(number, "")))
    return out


def pins_only(edits: tuple[XmlEdit, ...]) -> bool:
    """Whether a fix changes nothing but pins (so a running VM needs no restart once they are taken live)."""
    return bool(edits) and all(e.path[:1] == ("cputune",) and e.path[-1].split("[")[0] in PIN_TAGS for e in edits)


def _cpumap(cpuset: str, host_cpus: int) -> tuple[bool, ...]:
    chosen = parse_cpuset(cpuset) if cpuset else set(range(host_cpus))
    return tuple(cpu in chosen for cpu in range(host_cpus))


def take_live(dom: Domain, pins: list[LivePin]) -> tuple[list[LivePin], list[str]]:
    """Set each pin on the running VM; (taken, why each other one was not — e.g. an iothread that exists only in
    the new definition until the next start)."""
    host_cpus = host_cpu_count(dom)
    taken, missed = [], []
    for pin in pins:
        try:
            pin_live(dom, pin.kind, pin.number, _cpumap(pin.cpuset, host_cpus))
            taken.append(pin)
        except OperationFailed as exc:
            missed.append(f"{pin}: {exc}")
    if taken:
        log.info("tune vm live pins", extra={"vm": dom.name(), "pins": [str(p) for p in taken]})
    return taken, missed
