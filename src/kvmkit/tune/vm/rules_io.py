"""Checks on disks and network interfaces of one definition (pure: DomainModel + HostFacts + goal)."""

from __future__ import annotations

from kvmkit.tune.model import Status
from kvmkit.tune.vm import sources as src
from kvmkit.tune.vm.domain import DiskModel, DomainModel, NicModel
from kvmkit.tune.vm.edits import XmlEdit
from kvmkit.tune.vm.finding import VmFinding, weights
from kvmkit.tune.vm.host import HostFacts
from kvmkit.tune.vm.rules_cpu import judged

LOCAL_SOURCES = ("file", "block", "volume")
DISK_DOCS = src.at("hard-drives-floppy-disks-cdroms", src.QEMU_BLOCK, src.RHEL)


def _driver(disk: DiskModel) -> tuple[str, ...]:
    return ("devices", f"disk[{disk.index}]", "driver")


def disk_bus(d: DomainModel, disk: DiskModel, host: HostFacts, goal: str) -> list[VmFinding]:
    return judged(
        f"disk.bus:{disk.target}", "storage", goal, weights("F", "F", "F", "F", "F"),
        disk.bus not in ("virtio", "scsi") and disk.source_type != "vhostuser",
        current=disk.bus or "?", expected="virtio (virtio-blk), or scsi on a virtio-scsi controller",
        why="emulated IDE/SATA controllers cost several VM exits per request and have one queue",
        source=DISK_DOCS,
        edits=(XmlEdit(("devices", f"disk[{disk.index}]", "target"), {"bus": "virtio"}),),
        knobs={"nova": "image property hw_disk_bus=virtio", "cloudstack": "VM detail rootDiskController=virtio "
               "(dataDiskController=virtio for data disks)"},
        auto=False,  # the guest's device name changes (sda → vda): a person checks fstab and the boot loader first
    )


def disk_cache(d: DomainModel, disk: DiskModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if disk.protocol == "rbd":
        return judged(
            f"disk.cache:{disk.target}", "storage", goal, weights("-", "W", "-", "-", "-"),
            disk.cache not in ("writeback", ""),
            current=f"cache={disk.cache or 'default'}", expected="cache=writeback (librbd's own cache on)",
            why="for RBD, QEMU's cache mode switches librbd's client cache: writeback lets it merge small writes "
                "while flushes still reach the OSDs",
            source=src.CEPH_QEMU, edits=(XmlEdit(_driver(disk), {"cache": "writeback"}),),
            knobs={"nova": "nova.conf [libvirt] disk_cachemodes=network=writeback",
                   "cloudstack": "disk offering's write-cache type 'writeback'"},
        )
    if disk.source_type not in LOCAL_SOURCES:
        return []
    return judged(
        f"disk.cache:{disk.target}", "storage", goal, weights("F", "W", "W", "-", "W"),
        disk.cache not in ("none", "directsync"),
        current=f"cache={disk.cache or 'default (writeback)'}", expected="cache=none",
        why="the host page cache under a guest that has its own doubles memory use, adds a copy per I/O and "
            "makes latency depend on the host's writeback",
        source=DISK_DOCS, edits=(XmlEdit(_driver(disk), {"cache": "none"}),),
        knobs={"nova": "nova.conf [libvirt] disk_cachemodes=file=none,block=none",
               "cloudstack": "disk offering's write-cache type 'no disk cache' (cache mode none)"},
    )


def disk_io(d: DomainModel, disk: DiskModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if disk.source_type not in LOCAL_SOURCES:
        return []
    wanted = "native" if disk.cache in ("none", "directsync") else "io_uring"
    return judged(
        f"disk.io:{disk.target}", "storage", goal, weights("W", "W", "W", "-", "W"),
        disk.io not in ("native", "io_uring"),
        current=f"io={disk.io or 'default (threads)'}", expected=f"io={wanted}",
        why="io=threads hands each request to a QEMU worker thread (more context switches, more CPU per I/O); "
            "native needs cache=none (O_DIRECT)",
        source=DISK_DOCS, edits=(XmlEdit(_driver(disk), {"io": wanted}),),
        knobs={"nova": "no flavor key: Nova uses io=native with cache=none on file/block disks",
               "cloudstack": "VM detail extraconfig cannot change a disk; CloudStack sets io=native for cache=none "
                             "on KVM (io policy in the disk offering, 4.18+)"},
    )


def disk_iothread(d: DomainModel, disk: DiskModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if disk.bus != "virtio":
        return []
    iothread = max(1, d.iothreads) if d.iothreads else 1
    edits = [XmlEdit(_driver(disk), {"iothread": str(iothread)})]
    if d.iothreads < 1:
        edits.insert(0, XmlEdit(("iothreads",), text="1"))
    return judged(
        f"disk.iothread:{disk.target}", "storage", goal, weights("W", "F", "W", "-", "W"), disk.iothread is None,
        current=f"iothread {disk.iothread}" if disk.iothread else "in QEMU's main loop",
        expected="its own iothread", why="without an iothread the disk's requests run in QEMU's main loop, "
        "behind monitor commands and every other device",
        source=src.at("iothreads-allocation", src.RHEL), edits=tuple(edits),
        knobs={"nova": "no Nova setting (Nova gives no disk an iothread); ask for it upstream",
               "cloudstack": "VM detail iothreads=1 and VM detail io.policy / extraconfig <iothreads> (4.18+)"},
    )


def disk_queues(d: DomainModel, disk: DiskModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if disk.bus != "virtio" or d.vcpus < 2:
        return []
    return judged(
        f"disk.queues:{disk.target}", "storage", goal, weights("-", "W", "-", "-", "-"),
        disk.queues is not None and disk.queues < d.vcpus,
        current=f"queues={disk.queues}" if disk.queues else "default (QEMU ≥ 5.2: one per vCPU)",
        expected=f"queues={d.vcpus}", why="one queue per vCPU lets each vCPU submit without taking a shared lock",
        source=DISK_DOCS, edits=(XmlEdit(_driver(disk), {"queues": str(d.vcpus)}),),
        knobs={"nova": "image property hw_disk_bus=virtio (Nova leaves queues to QEMU's default, one per vCPU)",
               "cloudstack": "no CloudStack setting: QEMU's default (one per vCPU) applies when queues is absent"},
    )


def disk_discard(d: DomainModel, disk: DiskModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if disk.device != "disk":
        return []
    edits = (XmlEdit(_driver(disk), {"discard": "unmap", "detect_zeroes": "unmap"}),)
    return judged(
        f"disk.discard:{disk.target}", "storage", goal, weights("-", "-", "-", "W", "W"),
        disk.discard != "unmap" or disk.detect_zeroes not in ("unmap", "on"),
        current=f"discard={disk.discard or 'ignore'} detect_zeroes={disk.detect_zeroes or 'off'}",
        expected="discard=unmap detect_zeroes=unmap",
        why="without discard, space the guest frees stays allocated on thin storage (files, RBD): more disks per "
            "host bought for blocks nobody uses",
        source=DISK_DOCS, edits=edits,
        knobs={"nova": "image properties hw_scsi_model=virtio-scsi hw_disk_bus=scsi and nova.conf [libvirt] "
                       "hw_disk_discard=unmap",
               "cloudstack": "disk offering / VM detail: KVM disks get discard=unmap when the storage supports it "
                             "(no per-VM key)"},
    )


def _nic_driver(nic: NicModel) -> tuple[str, ...]:
    return ("devices", f"interface[{nic.index}]", "driver")


def nic_model(d: DomainModel, nic: NicModel, host: HostFacts, goal: str) -> list[VmFinding]:
    return judged(
        f"nic.model:{nic.mac}", "network", goal, weights("F", "F", "F", "F", "F"), nic.model != "virtio",
        current=nic.model or "default (rtl8139)", expected="virtio",
        why="emulated NICs (e1000, rtl8139) exit to QEMU for every register access: a fraction of virtio's rate",
        source=src.at("setting-nic-driver-specific-options", src.RHEL),
        edits=(XmlEdit(("devices", f"interface[{nic.index}]", "model"), {"type": "virtio"}),),
        knobs={"nova": "image property hw_vif_model=virtio", "cloudstack": "the template's NIC adapter type "
               "(virtio by default for KVM; nicAdapter VM detail)"},
        auto=False,  # the guest sees a new device (name and driver): a person checks its network config
    )


def nic_backend(d: DomainModel, nic: NicModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if nic.model != "virtio" or nic.type == "vhostuser":
        return []
    if not host.vhost_net:
        return [VmFinding(f"nic.backend:{nic.mac}", "network", Status.NA, "QEMU userspace virtio-net",
                          "vhost-net", "this host has no /dev/vhost-net (module missing): QEMU's userspace "
                          "virtio-net is what runs; load vhost_net for in-kernel packet handling",
                          src.at("setting-nic-driver-specific-options"))]
    return judged(
        f"nic.backend:{nic.mac}", "network", goal, weights("F", "F", "F", "W", "W"), nic.driver_name == "qemu",
        current=f"driver name={nic.driver_name or 'default (vhost)'}", expected="vhost (driver name left out)",
        why="driver name='qemu' forces userspace virtio-net: every packet crosses into QEMU's main loop",
        source=src.at("setting-nic-driver-specific-options", src.RHEL),
        edits=(XmlEdit(_nic_driver(nic), remove_attrs=("name",)),),
        knobs={"nova": "nova.conf [libvirt] use_virtio_for_bridges=true; never set driver=qemu",
               "cloudstack": "no setting: CloudStack lets libvirt pick vhost"},
    )


def nic_multiqueue(d: DomainModel, nic: NicModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if nic.model != "virtio" or d.vcpus < 2:
        return []
    return judged(
        f"nic.multiqueue:{nic.mac}", "network", goal, weights("-", "F", "W", "-", "W"),
        (nic.queues or 1) < d.vcpus,
        current=f"queues={nic.queues or 1}", expected=f"queues={d.vcpus} (one per vCPU)",
        why="one queue pair puts every packet's interrupt and softirq on one vCPU; the guest still needs "
            "`ethtool -L eth0 combined N`",
        source=src.at("setting-nic-driver-specific-options", src.RHEL),
        edits=(XmlEdit(_nic_driver(nic), {"queues": str(d.vcpus)}),),
        knobs={"nova": "flavor extra spec hw:vif_multiqueue_enabled=true (image property "
                       "hw_vif_multiqueue_enabled=true)",
               "cloudstack": f"VM detail nicMultiqueueNumber={d.vcpus} (4.18+)"},
    )


def nic_rings(d: DomainModel, nic: NicModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if nic.model != "virtio":
        return []
    attrs = {"rx_queue_size": "1024"}
    if nic.type == "vhostuser":
        attrs["tx_queue_size"] = "1024"  # libvirt: tx_queue_size only for vhost-user
    small = (nic.rx_queue_size or 256) < 1024 or (nic.type == "vhostuser" and (nic.tx_queue_size or 256) < 1024)
    return judged(
        f"nic.rings:{nic.mac}", "network", goal, weights("W", "W", "-", "-", "-"), small,
        current=f"rx_queue_size={nic.rx_queue_size or 256} tx_queue_size={nic.tx_queue_size or 256}",
        expected=" ".join(f"{k}=1024" for k in attrs),
        why="256-entry rings drop packets in bursts (and the retransmits are the latency tail)",
        source=src.at("setting-nic-driver-specific-options", src.NOVA_CONF),
        edits=(XmlEdit(_nic_driver(nic), attrs),),
        knobs={"nova": "nova.conf [libvirt] rx_queue_size=1024 tx_queue_size=1024",
               "cloudstack": "no CloudStack setting for ring sizes"},
    )


DISK_RULES = (disk_bus, disk_cache, disk_io, disk_iothread, disk_queues, disk_discard)
NIC_RULES = (nic_model, nic_backend, nic_multiqueue, nic_rings)


def judge_devices(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    findings: list[VmFinding] = []
    for disk in d.disks:
        if disk.device in ("cdrom", "floppy"):
            continue
        for rule in DISK_RULES:
            findings += rule(d, disk, host, goal)
    for nic in d.nics:
        for nic_rule in NIC_RULES:
            findings += nic_rule(d, nic, host, goal)
    return findings
