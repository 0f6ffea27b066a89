"""The parts of a libvirt domain definition that tuning judges, parsed into frozen dataclasses (no I/O here).

The XML comes from libvirt but is still treated as untrusted text: bounded size, defusedxml-free ElementTree
(libvirt never emits DTDs or entities, and ElementTree does not fetch external entities), every number checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from kvmkit.errors import InvalidInput

MAX_XML_BYTES = 4 << 20
NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"


@dataclass(frozen=True)
class DiskModel:
    index: int  # 1-based position among <disk> elements (the ElementPath used by edits)
    target: str
    bus: str
    device: str
    source_type: str  # file | block | network | volume | vhostuser
    protocol: str  # rbd, … for network disks
    cache: str
    io: str
    iothread: int | None
    queues: int | None
    discard: str
    detect_zeroes: str


@dataclass(frozen=True)
class NicModel:
    index: int
    mac: str
    type: str  # bridge | network | direct | vhostuser | user …
    model: str
    driver_name: str  # "" (libvirt picks vhost when it can) | vhost | qemu
    queues: int | None
    rx_queue_size: int | None
    tx_queue_size: int | None


@dataclass(frozen=True)
class DomainModel:
    name: str
    uuid: str
    domain_type: str  # kvm | qemu (TCG)
    vcpus: int
    memory_kib: int
    cpu_mode: str  # "" (no <cpu>: QEMU's default model) | custom | host-model | host-passthrough | maximum
    cpu_model: str
    topology: tuple[int, int, int] | None  # sockets, cores, threads
    vcpu_pins: dict[int, str] = field(default_factory=dict)
    emulator_pin: str = ""
    iothread_pins: dict[int, str] = field(default_factory=dict)
    iothreads: int = 0
    numatune_mode: str = ""
    numatune_nodeset: str = ""
    hugepages: bool = False
    nosharepages: bool = False
    locked: bool = False
    balloon_model: str = "virtio"  # libvirt adds a virtio balloon when none is named
    balloon_stats_period: int | None = None
    balloon_deflate_on_oom: bool = False
    balloon_free_page_reporting: bool = False
    disks: tuple[DiskModel, ...] = ()
    nics: tuple[NicModel, ...] = ()
    timers: dict[str, bool] = field(default_factory=dict)  # name → present
    hyperv: frozenset[str] = frozenset()  # enlightenments switched on
    pmu: str = ""  # "" (QEMU's default: on with host CPU models) | on | off
    windows: bool = False
    metadata_namespaces: frozenset[str] = frozenset()


def _int(text: str | None, what: str, default: int | None = None, top: int = 1 << 40) -> int | None:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"domain XML: {what} is not a number: {text[:40]!r}") from None
    if not 0 <= value <= top:
        raise InvalidInput(f"domain XML: {what} out of range: {value}")
    return value


def _memory_kib(el: ET.Element | None) -> int:
    if el is None:
        return 0
    units = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
             "mb": 1e6 / 1024, "g": 1 << 20, "gib": 1 << 20, "gb": 1e9 / 1024, "t": 1 << 30, "tib": 1 << 30}
    unit = el.get("unit", "KiB").lower()
    if unit not in units:
        raise InvalidInput(f"domain XML: unknown memory unit {unit[:20]!r}")
    return int((_int(el.text, "memory") or 0) * units[unit])


def _disk(index: int, el: ET.Element) -> DiskModel:
    driver = el.find("driver")
    d = driver.attrib if driver is not None else {}
    target = el.find("target")
    source = el.find("source")
    return DiskModel(
        index=index,
        target=target.get("dev", "") if target is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        device=el.get("device", "disk"),
        source_type=el.get("type", "file"),
        protocol=source.get("protocol", "") if source is not None else "",
        cache=d.get("cache", ""),
        io=d.get("io", ""),
        iothread=_int(d.get("iothread"), "disk iothread", top=1 << 16),
        queues=_int(d.get("queues"), "disk queues", top=1024),
        discard=d.get("discard", ""),
        detect_zeroes=d.get("detect_zeroes", ""),
    )


def _nic(index: int, el: ET.Element) -> NicModel:
    model = el.find("model")
    driver = el.find("driver")
    d = driver.attrib if driver is not None else {}
    mac = el.find("mac")
    return NicModel(
        index=index,
        mac=mac.get("address", "") if mac is not None else "",
        type=el.get("type", ""),
        model=model.get("type", "") if model is not None else "",
        driver_name=d.get("name", ""),
        queues=_int(d.get("queues"), "interface queues", top=1024),
        rx_queue_size=_int(d.get("rx_queue_size"), "rx_queue_size", top=1 << 16),
        tx_queue_size=_int(d.get("tx_queue_size"), "tx_queue_size", top=1 << 16),
    )


def _pins(cputune: ET.Element | None, tag: str, key: str) -> dict[int, str]:
    if cputune is None:
        return {}
    pins = {}
    for pin in cputune.findall(tag)[:4096]:
        number = _int(pin.get(key), f"{tag} {key}", top=1 << 16)
        if number is not None:
            pins[number] = pin.get("cpuset", "")
    return pins


def _windows(root: ET.Element) -> bool:
    """libosinfo's OS id (virt-install, virt-manager) or Nova's os_type image property say Windows."""
    os_el = root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os")
    if os_el is not None and "microsoft.com/win" in os_el.get("id", ""):
        return True
    return any(el.tag.endswith("}os_type") and (el.text or "").strip().lower() == "windows" for el in root.iter())


def _hyperv(hyperv: ET.Element | None) -> frozenset[str]:
    """The enlightenments switched on; mode='passthrough' hands the guest every one the host has."""
    if hyperv is None:
        return frozenset()
    if hyperv.get("mode") == "passthrough":
        return frozenset(["passthrough"])
    return frozenset(el.tag for el in hyperv if el.get("state", "on") == "on")


def parse(xml: str) -> DomainModel:
    """DomainModel from domain XML, or InvalidInput with one line saying what is wrong."""
    if len(xml.encode()) > MAX_XML_BYTES:
        raise InvalidInput(f"domain XML larger than {MAX_XML_BYTES} bytes")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InvalidInput(f"domain XML does not parse: {exc}") from None
    if root.tag != "domain":
        raise InvalidInput(f"not a domain definition (root element <{root.tag[:40]}>)")
    cpu = root.find("cpu")
    topo = cpu.find("topology") if cpu is not None else None
    topology = None
    if topo is not None:
        topology = tuple(_int(topo.get(k), f"topology {k}", 1, top=4096) or 1 for k in ("sockets", "cores", "threads"))
    cputune = root.find("cputune")
    emulator = cputune.find("emulatorpin") if cputune is not None else None
    numatune = root.find("numatune/memory")
    backing = root.find("memoryBacking")
    balloon = root.find("devices/memballoon")
    stats = balloon.find("stats") if balloon is not None else None
    hyperv = root.find("features/hyperv")
    pmu = root.find("features/pmu")
    metadata = root.find("metadata")
    return DomainModel(
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip(),
        domain_type=root.get("type", ""),
        vcpus=_int(root.findtext("vcpu"), "vcpu", 1, top=4096) or 1,
        memory_kib=_memory_kib(root.find("memory")),
        cpu_mode=(cpu.get("mode", "custom") if cpu is not None else ""),
        cpu_model=(cpu.findtext("model") or "").strip() if cpu is not None else "",
        topology=topology,  # type: ignore[arg-type]
        vcpu_pins=_pins(cputune, "vcpupin", "vcpu"),
        emulator_pin=emulator.get("cpuset", "") if emulator is not None else "",
        iothread_pins=_pins(cputune, "iothreadpin", "iothread"),
        iothreads=_int(root.findtext("iothreads"), "iothreads", 0, top=1 << 16) or 0,
        numatune_mode=numatune.get("mode", "strict") if numatune is not None else "",
        numatune_nodeset=numatune.get("nodeset", "") if numatune is not None else "",
        hugepages=backing is not None and backing.find("hugepages") is not None,
        nosharepages=backing is not None and backing.find("nosharepages") is not None,
        locked=backing is not None and backing.find("locked") is not None,
        balloon_model=balloon.get("model", "virtio") if balloon is not None else "virtio",
        balloon_stats_period=_int(stats.get("period"), "memballoon stats period", top=1 << 20) if stats is not None
        else None,
        balloon_deflate_on_oom=balloon is not None and balloon.get("autodeflate") == "on",
        balloon_free_page_reporting=balloon is not None and balloon.get("freePageReporting") == "on",
        disks=tuple(_disk(i, el) for i, el in enumerate(root.findall("devices/disk")[:1024], start=1)),
        nics=tuple(_nic(i, el) for i, el in enumerate(root.findall("devices/interface")[:1024], start=1)),
        timers={t.get("name", ""): t.get("present", "yes") == "yes" for t in root.findall("clock/timer")[:64]},
        hyperv=_hyperv(hyperv),
        pmu=pmu.get("state", "") if pmu is not None else "",
        windows=_windows(root),
        metadata_namespaces=frozenset(
            el.tag[1:].split("}")[0] for el in (metadata if metadata is not None else []) if el.tag.startswith("{")),
    )
