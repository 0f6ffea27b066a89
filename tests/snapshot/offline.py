"""An offline rig for the snapshot engine: libvirt's in-memory `test:///default` driver (a real libvirt, no
QEMU), the FakeMemoryDriver for storage, the in-process FakeWatchdog and FakeGuestAgent, a fixed clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.virt.connection import connection, open_connection
from tests.fakes.lab_doubles import FakeGuestAgent, FakeWatchdogFactory
from tests.fakes.memory_driver import FakeMemoryDriver

URI = "test:///default"
NOW = datetime(2026, 12, 3, 10, 0, 0)


def domain_xml(name: str, targets: list[str], extra_disks: str = "") -> str:
    disks = "".join(
        f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='nbd' name='mem/{name}-{t}'><host name='127.0.0.1' port='10809'/></source>"
        f"<target dev='{t}' bus='virtio'/></disk>" for t in targets)
    return (f"<domain type='test'><name>{name}</name><memory>131072</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type></os><devices>{disks}{extra_disks}</devices></domain>")


@dataclass
class Rig:
    ctx: SnapshotContext
    driver: FakeMemoryDriver
    guest: FakeGuestAgent
    watchdogs: FakeWatchdogFactory
    vm: str
    vm_uuid: str
    targets: list[str]
    extra_vms: list[str] = field(default_factory=list)

    def source(self, target: str, vm: str | None = None) -> str:
        return f"mem/{vm or self.vm}-{target}"

    def rows(self) -> list:
        return self.ctx.catalog.list()

    def kvmkit_snaps(self) -> dict[str, list[str]]:
        """image → kvmkit snapshot names on the fake storage (what `owned` would report)."""
        return {image: sorted(s) for image, snaps in self.driver.snaps.items() if (s := [n for n in snaps
                                                                                          if n.startswith("kvmkit-")])}

    def data(self) -> dict[str, bytes]:
        return {t: self.driver.images[self.source(t)] for t in self.targets}

    def write(self, text: str) -> None:
        for t in self.targets:
            self.driver.images[self.source(t)] = f"{t}:{text}".encode()

    def add_vm(self, targets: list[str], running: bool = True) -> str:
        name = f"off-{uuid.uuid4().hex[:8]}"
        _define(name, targets, self.driver, running)
        self.extra_vms.append(name)
        return name

    def set_running(self, running: bool) -> None:
        with connection(URI) as conn:
            dom = conn.lookupByName(self.vm)
            if running and not dom.isActive():
                dom.create()
            elif not running and dom.isActive():
                dom.destroy()


def _define(name: str, targets: list[str], driver: FakeMemoryDriver, running: bool, extra_disks: str = "") -> str:
    for t in targets:
        driver.add_image(f"mem/{name}-{t}", f"{t}:v1".encode())
    with connection(URI) as conn:
        dom = conn.defineXML(domain_xml(name, targets, extra_disks))
        if running:
            dom.create()
        return dom.UUIDString()


@contextmanager
def offline_rig(tmp_path: Path, targets: tuple[str, ...] = ("vda", "vdb", "vdc"), *, running: bool = True,
                driver: FakeMemoryDriver | None = None, extra_disks: str = "",
                watchdogs: FakeWatchdogFactory | None = None) -> Iterator[Rig]:
    # test:///default keeps its domains only while some connection to it is open: hold one for the rig's life
    keeper = open_connection(URI)
    driver = driver or FakeMemoryDriver()
    guest = FakeGuestAgent()
    watchdogs = watchdogs or FakeWatchdogFactory()
    name = f"off-{uuid.uuid4().hex[:8]}"
    vm_uuid = _define(name, list(targets), driver, running, extra_disks)
    catalog = Catalog(tmp_path / "state" / "catalog.sqlite")
    ctx = SnapshotContext(uri=URI, state_dir=tmp_path / "state", catalog=catalog, drivers=[driver],
                          new_drivers=lambda: [driver], watchdog=watchdogs, guest=guest, clock=lambda: NOW)
    rig = Rig(ctx, driver, guest, watchdogs, name, vm_uuid, list(targets))
    try:
        yield rig
    finally:
        catalog.close()
        with connection(URI) as conn:
            for vm in [name, *rig.extra_vms]:
                dom = conn.lookupByName(vm)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        keeper.close()
