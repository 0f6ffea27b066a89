"""Collectors for memory, devices, kernel parameters, security state and block I/O."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable

from kvmkit.tune.hostfs import HostView, Unreadable
from kvmkit.tune.model import HOST, Scalar
from kvmkit.tune.readers import CPU, Observed, bracketed, cmdline_params, parse_int, per_file, single

# --- memory -----------------------------------------------------------------------------------------------


LIBVIRT_DEFS = "/etc/libvirt/qemu"
_XML_UNITS = {
    "b": 2**-20,
    "bytes": 2**-20,
    "kb": 1000 / 2**20,
    "k": 2**-10,
    "kib": 2**-10,
    "mb": 10**6 / 2**20,
    "m": 1,
    "mib": 1,
    "gb": 10**9 / 2**20,
    "g": 1024,
    "gib": 1024,
    "tb": 10**12 / 2**20,
    "t": 2**20,
    "tib": 2**20,
}
_QEMU_SUFFIX = {"": 1, "m": 1, "k": 2**-10, "g": 1024, "t": 2**20}
QEMU_DEFAULT_MIB = 128  # what QEMU gives a guest started without -m


def _domain_memory_mib(host: HostView) -> tuple[float, int]:
    """(total MiB, domain count) configured for libvirt domains, from their persistent XML definitions."""
    total, count = 0.0, 0
    for name in host.listdir(LIBVIRT_DEFS):
        if not name.endswith(".xml"):
            continue
        try:
            memory = ET.fromstring(host.read(f"{LIBVIRT_DEFS}/{name}")).find("memory")
        except ET.ParseError as exc:
            raise Unreadable(f"{LIBVIRT_DEFS}/{name}: not valid XML ({exc})") from None
        if memory is None or not (memory.text or "").strip().isdigit():
            continue
        total += int(memory.text.strip()) * _XML_UNITS.get(memory.get("unit", "KiB").lower(), 2**-10)
        count += 1
    return total, count


def qemu_memory_mib(arg: str) -> float:
    """Guest RAM from a QEMU `-m` argument: '512', '2G', 'size=1G,slots=4,maxmem=8G' (M is the default unit)."""
    if not arg:
        return QEMU_DEFAULT_MIB
    size = next((p.split("=", 1)[1] for p in arg.split(",") if p.startswith("size=")), arg.split(",")[0])
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?", size.strip())
    if not match:
        raise Unreadable(f"cannot parse QEMU memory size {arg!r}")
    return float(match.group(1)) * _QEMU_SUFFIX[match.group(2).lower()]


def vm_memory_mib(host: HostView) -> tuple[float, str]:
    """Memory configured for VMs: libvirt's persistent definitions, else the running QEMU processes."""
    try:
        total, count = _domain_memory_mib(host)
    except Unreadable as exc:
        if "does not exist" not in exc.reason:
            raise
        total, count = 0.0, 0
    if count:
        return total, f"{count} libvirt domain(s)"
    lines = [line for line in host.probe("qemu_guests").splitlines() if line.strip()]
    if not lines:
        raise Unreadable(
            f"no libvirt domain definitions in {LIBVIRT_DEFS} and no running QEMU: nothing to size hugepages against"
        )
    return sum(qemu_memory_mib(line.partition("\t")[2].strip()) for line in lines), f"{len(lines)} running QEMU"


def collect_hugepages_coverage(host: HostView) -> Observed:
    """Reserved hugepage memory as % of the memory configured for VMs (100 = every guest can be backed)."""
    base = "/sys/kernel/mm/hugepages"
    reserved_mib = 0
    pages_2m = 0
    for size_dir in host.listdir(base):
        match = re.fullmatch(r"hugepages-(\d+)kB", size_dir)
        if match:
            pages = parse_int(host.read(f"{base}/{size_dir}/nr_hugepages"), f"{base}/{size_dir}/nr_hugepages")
            reserved_mib += pages * int(match.group(1)) // 1024
            pages_2m += pages if match.group(1) == "2048" else 0
    vm_mib, where = vm_memory_mib(host)
    pct = round(100 * reserved_mib / vm_mib) if vm_mib else 0
    facts: dict[str, Scalar] = {"reserved_mib": reserved_mib, "vm_mib": round(vm_mib), "pages_2m": pages_2m}
    return Observed({HOST: pct}, {}, f"{reserved_mib} MiB reserved for {round(vm_mib)} MiB in {where}", facts)


def collect_numa_nodes(host: HostView) -> Observed:
    nodes = [n for n in host.listdir("/sys/devices/system/node") if re.fullmatch(r"node\d+", n)]
    if not nodes:
        raise Unreadable("/sys/devices/system/node lists no nodes")
    return Observed({HOST: len(nodes)}, {}, ",".join(nodes))


# --- devices, kernel, I/O ---------------------------------------------------------------------------------


def collect_irqbalance(host: HostView) -> Observed:
    state = host.probe("irqbalance")
    return Observed({HOST: state.startswith("running")}, {}, state)


def collect_iommu_groups(host: HostView) -> Observed:
    try:
        groups = host.listdir("/sys/kernel/iommu_groups")
    except Unreadable as exc:
        if "does not exist" not in exc.reason:
            raise
        groups = []
    return Observed({HOST: len(groups)}, {}, "IOMMU on" if groups else "no IOMMU groups: VT-d/AMD-Vi off")


def collect_iommu_passthrough(host: HostView) -> Observed:
    params = cmdline_params(host)
    passthrough = params.get("iommu") == "pt" or params.get("iommu.passthrough") in ("1", "on", "y")
    shown = [f"{n}={params[n]}" for n in ("intel_iommu", "amd_iommu", "iommu", "iommu.passthrough") if n in params]
    return Observed({HOST: passthrough}, {}, " ".join(shown) or "no IOMMU parameters on /proc/cmdline")


def device_present(path: str) -> Callable[[HostView], Observed]:
    def collect(host: HostView) -> Observed:
        return Observed({HOST: host.exists(path)}, {}, path)

    return collect


def collect_mitigations(host: HostView) -> Observed:
    params = cmdline_params(host)
    value = params.get("mitigations")
    return Observed({HOST: value}, {}, "mitigations=auto is the default" if value is None else "")


def collect_vulnerabilities(host: HostView) -> Observed:
    """Per CPU vulnerability: not-affected / mitigated / vulnerable (the kernel's own words, classified)."""
    base = f"{CPU}/vulnerabilities"
    values: dict[str, Scalar] = {}
    bad = []
    for name in host.listdir(base):
        text = host.read(f"{base}/{name}")
        kind = (
            "vulnerable"
            if text.startswith("Vulnerable")
            else ("not-affected" if text.startswith("Not affected") else "mitigated")
        )
        values[name] = kind
        if kind == "vulnerable":
            bad.append(f"{name}: {text}")
    return Observed(values, {}, "; ".join(bad))


def _is_tuned_disk(host: HostView, name: str) -> bool:
    """NVMe and virtual disks, and SSDs: the devices where the I/O scheduler choice matters for VMs."""
    if re.fullmatch(r"nvme\d+n\d+|vd[a-z]+|xvd[a-z]+", name):
        return True
    if re.fullmatch(r"sd[a-z]+", name):
        try:
            return host.read(f"/sys/block/{name}/queue/rotational").strip() == "0"
        except Unreadable:
            return False
    return False


def collect_io_scheduler(host: HostView) -> Observed:
    disks = [n for n in host.listdir("/sys/block") if _is_tuned_disk(host, n)]
    if not disks:
        raise Unreadable("no NVMe, virtio or SSD disks in /sys/block")
    return per_file(host, {d: f"/sys/block/{d}/queue/scheduler" for d in disks}, lambda t, _p: bracketed(t))


def collect_tuned_profile(host: HostView) -> Observed:
    try:
        return single(host, "/etc/tuned/active_profile", lambda t, _p: t.strip() or "off")
    except Unreadable:
        pass
    try:
        out = host.probe("tuned-adm")
    except Unreadable as exc:
        if "not installed" in exc.reason:
            return Observed({HOST: "not installed"}, {}, "no /etc/tuned/active_profile and no tuned-adm")
        raise
    match = re.search(r"Current active profile:\s*(\S+)", out)
    return Observed({HOST: match.group(1) if match else "off"}, {}, out.splitlines()[0] if out else "")


DMI = {"vendor": "sys_vendor", "product": "product_name", "bios": "bios_version"}


def collect_platform(host: HostView) -> Observed:
    """CPU model and, where the firmware exposes DMI, vendor/product/BIOS version: context for the BIOS advice
    (item names differ per vendor) and, across a fleet, BIOS drift in `diff`. No goal judges it."""
    values: dict[str, Scalar] = {}
    sources: dict[str, str] = {}
    try:
        model = re.search(r"^model name\s*:\s*(.+)$", host.read("/proc/cpuinfo"), re.M)
        if model:
            values["cpu"] = model.group(1).strip()
    except Unreadable:
        pass
    for field, name in DMI.items():
        path = f"/sys/class/dmi/id/{name}"
        try:
            values[field] = host.read(path).strip()
            sources[field] = path
        except Unreadable:
            continue
    if not values:
        raise Unreadable("no model name in /proc/cpuinfo and no /sys/class/dmi/id")
    detail = "" if "bios" in values else "no DMI in sysfs (a VM, or firmware without SMBIOS)"
    return Observed(values, sources, detail)
