"""The checks: each reads one setting of a host through a HostView and returns a Reading.

A check only observes; what the value *should* be lives in the goal profiles (data), and how to fix it in
fixes.py. Values are parsed here into plain scalars so profiles can compare them (ints stay ints, on/off
settings become booleans). Anything unreadable raises Unreadable and `read_all` turns it into UNKNOWN.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmkit.tune.hostfs import HostView, Unreadable
from kvmkit.tune.model import HOST, Reading, Scalar

CPU = "/sys/devices/system/cpu"
NO_CPUFREQ = "no cpufreq driver: the CPU frequency is managed by firmware or the hypervisor"
NO_CPUIDLE = "no cpuidle states exposed (driver {driver}): idle depth is chosen by firmware or the hypervisor"


@dataclass
class Observed:
    """What a collector returns; `sources` says which file each instance's value came from."""

    values: dict[str, Scalar]
    sources: dict[str, str] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    area: str
    collect: Callable[[HostView], Observed]


def bracketed(text: str) -> str:
    """The selected word of a sysfs choice file such as 'always [madvise] never'."""
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else text.strip()


def _int(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise Unreadable(f"{where}: expected an integer, got {text.strip()[:40]!r}") from None


def _cpus(host: HostView) -> list[str]:
    names = [n for n in host.listdir(CPU) if re.fullmatch(r"cpu\d+", n)]
    return sorted(names, key=lambda n: int(n[3:]))


def _per_file(host: HostView, paths: dict[str, str], parse: Callable[[str, str], Scalar]) -> Observed:
    """Read one file per instance; an instance whose file is missing is skipped, all missing is Unreadable."""
    values: dict[str, Scalar] = {}
    sources: dict[str, str] = {}
    reasons = []
    for instance, path in paths.items():
        try:
            values[instance] = parse(host.read(path), path)
            sources[instance] = path
        except Unreadable as exc:
            reasons.append(exc.reason)
    if not values:
        raise Unreadable(reasons[0] if reasons else "nothing to read")
    return Observed(values, sources)


def _single(host: HostView, path: str, parse: Callable[[str, str], Scalar] = lambda t, _p: t.strip()) -> Observed:
    return _per_file(host, {HOST: path}, parse)


def cmdline_params(host: HostView) -> dict[str, str | None]:
    """Kernel command line as name → value (None for bare flags); only the part before a lone '--'."""
    params: dict[str, str | None] = {}
    for word in host.read("/proc/cmdline").split():
        if word == "--":
            break
        name, sep, value = word.partition("=")
        params[name] = value if sep else None
    return params


def _cmdline_param(*names: str) -> Callable[[HostView], Observed]:
    def collect(host: HostView) -> Observed:
        params = cmdline_params(host)
        for name in names:
            if name in params:
                return Observed({HOST: params[name] if params[name] is not None else ""}, {}, f"{name}=")
        return Observed({HOST: None}, {}, "not on /proc/cmdline")

    return collect


# --- CPU frequency and power ------------------------------------------------------------------------------


def _policies(host: HostView) -> list[str]:
    try:
        return [n for n in host.listdir(f"{CPU}/cpufreq") if re.fullmatch(r"policy\d+", n)]
    except Unreadable:
        return []


def collect_cpufreq_driver(host: HostView) -> Observed:
    policies = _policies(host)
    if not policies:
        host.listdir(CPU)  # a host without /sys is UNKNOWN, not "none"
        return Observed({HOST: "none"}, {}, NO_CPUFREQ)
    return _single(host, f"{CPU}/cpufreq/{policies[0]}/scaling_driver")


def _per_policy(file: str, missing: str, parse: Callable[[str, str], Scalar]) -> Callable[[HostView], Observed]:
    def collect(host: HostView) -> Observed:
        policies = _policies(host)
        if not policies:
            raise Unreadable(NO_CPUFREQ)
        try:
            return _per_file(host, {p: f"{CPU}/cpufreq/{p}/{file}" for p in policies}, parse)
        except Unreadable:
            raise Unreadable(missing) from None

    return collect


def collect_epb(host: HostView) -> Observed:
    try:
        return _per_file(host, {c: f"{CPU}/{c}/power/energy_perf_bias" for c in _cpus(host)}, _int)
    except Unreadable as exc:
        if "does not exist" in exc.reason:
            raise Unreadable("no energy_perf_bias in sysfs (not an Intel CPU, or a VM)") from None
        raise


def collect_turbo(host: HostView) -> Observed:
    """True when turbo/boost is allowed. intel_pstate says no_turbo (inverted); acpi-cpufreq and amd-pstate say
    boost, globally or per policy."""
    no_turbo = f"{CPU}/intel_pstate/no_turbo"
    if host.exists(no_turbo):
        return _single(host, no_turbo, lambda t, p: _int(t, p) == 0)
    if host.exists(f"{CPU}/cpufreq/boost"):
        return _single(host, f"{CPU}/cpufreq/boost", lambda t, p: _int(t, p) == 1)
    policies = _policies(host)
    if policies and host.exists(f"{CPU}/cpufreq/{policies[0]}/boost"):
        return _per_file(host, {p: f"{CPU}/cpufreq/{p}/boost" for p in policies}, lambda t, p: _int(t, p) == 1)
    raise Unreadable("no turbo/boost control in sysfs (no cpufreq driver, or the BIOS hides it)")


# --- idle states ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleState:
    cpu: str
    index: str
    name: str
    latency_us: int
    disabled: bool

    @property
    def disable_path(self) -> str:
        return f"{CPU}/{self.cpu}/cpuidle/{self.index}/disable"


def idle_states(host: HostView) -> list[IdleState]:
    """Every CPU's cpuidle states; Unreadable when the kernel exposes none."""
    states = []
    for cpu in _cpus(host):
        try:
            indexes = [n for n in host.listdir(f"{CPU}/{cpu}/cpuidle") if re.fullmatch(r"state\d+", n)]
        except Unreadable:
            continue
        for index in sorted(indexes, key=lambda n: int(n[5:])):
            base = f"{CPU}/{cpu}/cpuidle/{index}"
            states.append(
                IdleState(
                    cpu=cpu,
                    index=index,
                    name=host.read(f"{base}/name"),
                    latency_us=_int(host.read(f"{base}/latency"), f"{base}/latency"),
                    disabled=host.read(f"{base}/disable").strip() == "1",
                )
            )
    if not states:
        try:
            driver = host.read(f"{CPU}/cpuidle/current_driver")
        except Unreadable:
            driver = "unknown"
        raise Unreadable(NO_CPUIDLE.format(driver=driver))
    return states


def collect_cstate_latency(host: HostView) -> Observed:
    """Per CPU: the worst exit latency (µs) among enabled idle states; the wake-up cost a vCPU can pay."""
    states = idle_states(host)
    values: dict[str, Scalar] = {}
    for state in states:
        if not state.disabled:
            values[state.cpu] = max(int(values.get(state.cpu) or 0), state.latency_us)
        else:
            values.setdefault(state.cpu, 0)
    first = states[0].cpu
    detail = " ".join(f"{s.name}({s.latency_us}us{',off' if s.disabled else ''})" for s in states if s.cpu == first)
    return Observed(values, {}, f"{first}: {detail}")


def collect_cstates_disabled(host: HostView) -> Observed:
    """Per CPU: how many idle states are disabled; deep states save the most power."""
    values: dict[str, Scalar] = {}
    for state in idle_states(host):
        values[state.cpu] = int(values.get(state.cpu) or 0) + (1 if state.disabled else 0)
    return Observed(values)


def collect_cmdline_max_cstate(host: HostView) -> Observed:
    params = cmdline_params(host)
    found = {n: params[n] for n in ("intel_idle.max_cstate", "processor.max_cstate") if n in params}
    if not found:
        return Observed({HOST: None}, {}, "no max_cstate on /proc/cmdline")
    limits = [_int(v or "", f"/proc/cmdline {n}") for n, v in found.items()]
    return Observed({HOST: min(limits)}, {}, " ".join(f"{n}={v}" for n, v in found.items()))


def collect_cpu_dma_latency(host: HostView) -> Observed:
    value = _int(host.probe("cpu_dma_latency"), "cpu_dma_latency")
    detail = "no PM-QoS limit requested" if value >= 2_000_000_000 else "a process holds /dev/cpu_dma_latency"
    return Observed({HOST: value}, {}, detail)


# --- memory -----------------------------------------------------------------------------------------------


def _domain_memory_mib(host: HostView) -> tuple[int, int]:
    """(total MiB, domain count) configured for libvirt domains, from their persistent XML definitions."""
    folder = "/etc/libvirt/qemu"
    units = {
        "b": 1 / 2**20,
        "bytes": 1 / 2**20,
        "kb": 1000 / 2**20,
        "k": 1 / 1024,
        "kib": 1 / 1024,
        "mb": 10**6 / 2**20,
        "m": 1,
        "mib": 1,
        "gb": 10**9 / 2**20,
        "g": 1024,
        "gib": 1024,
    }
    total, count = 0.0, 0
    for name in host.listdir(folder):
        if not name.endswith(".xml"):
            continue
        try:
            memory = ET.fromstring(host.read(f"{folder}/{name}")).find("memory")
        except ET.ParseError as exc:
            raise Unreadable(f"{folder}/{name}: not valid XML ({exc})") from None
        if memory is None or not (memory.text or "").strip().isdigit():
            continue
        total += int(memory.text.strip()) * units.get(memory.get("unit", "KiB").lower(), 1 / 1024)
        count += 1
    if count == 0:
        raise Unreadable(f"no libvirt domain definitions in {folder}: nothing to size hugepages against")
    return round(total), count


def collect_hugepages_coverage(host: HostView) -> Observed:
    """Reserved hugepage memory as % of the memory configured for VMs (100 = every guest can be backed)."""
    base = "/sys/kernel/mm/hugepages"
    reserved_mib = 0
    for size_dir in host.listdir(base):
        match = re.fullmatch(r"hugepages-(\d+)kB", size_dir)
        if match:
            pages = _int(host.read(f"{base}/{size_dir}/nr_hugepages"), f"{base}/{size_dir}/nr_hugepages")
            reserved_mib += pages * int(match.group(1)) // 1024
    vm_mib, domains = _domain_memory_mib(host)
    pct = round(100 * reserved_mib / vm_mib) if vm_mib else 0
    return Observed({HOST: pct}, {}, f"{reserved_mib} MiB reserved for {vm_mib} MiB in {domains} domain(s)")


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


def _device(path: str) -> Callable[[HostView], Observed]:
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
    return _per_file(host, {d: f"/sys/block/{d}/queue/scheduler" for d in disks}, lambda t, _p: bracketed(t))


def collect_tuned_profile(host: HostView) -> Observed:
    try:
        return _single(host, "/etc/tuned/active_profile", lambda t, _p: t.strip() or "off")
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


def _text_file(path: str) -> Callable[[HostView], Observed]:
    return lambda host: _single(host, path)


def _int_file(path: str) -> Callable[[HostView], Observed]:
    return lambda host: _single(host, path, _int)


def _choice_file(path: str) -> Callable[[HostView], Observed]:
    return lambda host: _single(host, path, lambda t, _p: bracketed(t))


CHECKS: tuple[Check, ...] = (
    Check("cpufreq_driver", "CPU frequency driver", "cpu", collect_cpufreq_driver),
    Check(
        "cpufreq_governor",
        "cpufreq governor",
        "cpu",
        _per_policy("scaling_governor", NO_CPUFREQ, lambda t, _p: t.strip()),
    ),
    Check(
        "epp",
        "Energy-performance preference (EPP)",
        "cpu",
        _per_policy(
            "energy_performance_preference",
            "the cpufreq driver exposes no EPP (needs HWP/CPPC active mode)",
            lambda t, _p: t.strip(),
        ),
    ),
    Check("epb", "Energy-performance bias (EPB)", "cpu", collect_epb),
    Check("turbo", "Turbo / boost allowed", "cpu", collect_turbo),
    Check("cpuidle_driver", "cpuidle driver", "cpu", _text_file(f"{CPU}/cpuidle/current_driver")),
    Check("cstate_exit_latency_us", "Worst exit latency of enabled C-states (µs)", "cpu", collect_cstate_latency),
    Check("cstates_disabled", "Disabled C-states per CPU", "cpu", collect_cstates_disabled),
    Check("cmdline_max_cstate", "max_cstate kernel parameter", "cpu", collect_cmdline_max_cstate),
    Check("cpu_dma_latency", "PM-QoS cpu_dma_latency (µs)", "cpu", collect_cpu_dma_latency),
    Check("smt", "SMT (hyper-threading)", "cpu", _text_file(f"{CPU}/smt/control")),
    Check("halt_poll_ns", "KVM halt polling (ns)", "cpu", _int_file("/sys/module/kvm/parameters/halt_poll_ns")),
    Check(
        "thp_enabled",
        "Transparent hugepages",
        "memory",
        _choice_file("/sys/kernel/mm/transparent_hugepage/enabled"),
    ),
    Check("thp_defrag", "THP defrag", "memory", _choice_file("/sys/kernel/mm/transparent_hugepage/defrag")),
    Check("hugepages_coverage_pct", "Hugepages reserved vs VM memory (%)", "memory", collect_hugepages_coverage),
    Check("numa_nodes", "NUMA nodes", "memory", collect_numa_nodes),
    Check("numa_balancing", "Automatic NUMA balancing", "memory", _int_file("/proc/sys/kernel/numa_balancing")),
    Check("ksm_run", "KSM (same-page merging)", "memory", _int_file("/sys/kernel/mm/ksm/run")),
    Check("swappiness", "vm.swappiness", "memory", _int_file("/proc/sys/vm/swappiness")),
    Check("dirty_ratio", "vm.dirty_ratio (%)", "memory", _int_file("/proc/sys/vm/dirty_ratio")),
    Check(
        "dirty_background_ratio",
        "vm.dirty_background_ratio (%)",
        "memory",
        _int_file("/proc/sys/vm/dirty_background_ratio"),
    ),
    Check("irqbalance", "irqbalance running", "kernel", collect_irqbalance),
    Check("iommu_groups", "IOMMU groups", "virt", collect_iommu_groups),
    Check("iommu_passthrough", "IOMMU passthrough mode (iommu=pt)", "virt", collect_iommu_passthrough),
    Check("kvm_device", "/dev/kvm present", "virt", _device("/dev/kvm")),
    Check("vhost_net", "/dev/vhost-net present", "virt", _device("/dev/vhost-net")),
    Check("nohz_full", "nohz_full CPUs", "kernel", _cmdline_param("nohz_full")),
    Check("isolcpus", "isolcpus", "kernel", _cmdline_param("isolcpus")),
    Check("rcu_nocbs", "rcu_nocbs CPUs", "kernel", _cmdline_param("rcu_nocbs", "rcu_nocb")),
    Check(
        "clocksource",
        "Clocksource",
        "kernel",
        _text_file("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
    ),
    Check("mitigations", "mitigations= kernel parameter", "kernel", collect_mitigations),
    Check("cpu_vulnerabilities", "CPU vulnerabilities", "kernel", collect_vulnerabilities),
    Check("io_scheduler", "I/O scheduler (NVMe/virtio/SSD)", "io", collect_io_scheduler),
    Check("tuned_profile", "Active tuned profile", "kernel", collect_tuned_profile),
)
CHECKS_BY_ID: dict[str, Check] = {c.id: c for c in CHECKS}


def read_check(host: HostView, check: Check) -> Reading:
    """One check's Reading; never raises: an unreadable or unexpected value becomes UNKNOWN with its reason."""
    try:
        observed = check.collect(host)
    except Unreadable as exc:
        return Reading(check=check.id, unknown=exc.reason)
    except Exception as exc:  # a surprise in one host's sysfs must not hide the other checks
        return Reading(check=check.id, unknown=f"unexpected {type(exc).__name__}: {exc}")
    return Reading(check=check.id, values=observed.values, sources=observed.sources, detail=observed.detail)


def read_all(host: HostView) -> list[Reading]:
    return [read_check(host, check) for check in CHECKS]
