"""Checks on CPU, memory and clock settings of one definition (pure: DomainModel + HostFacts + goal)."""

from __future__ import annotations

from collections.abc import Callable

from kvmkit.tune.model import Status
from kvmkit.tune.vm import sources as src
from kvmkit.tune.vm.domain import DomainModel
from kvmkit.tune.vm.edits import XmlEdit
from kvmkit.tune.vm.finding import VmFinding, severity, weights
from kvmkit.tune.vm.host import HostFacts, parse_cpuset
from kvmkit.tune.vm.measured import CONTENDED_P95_PCT

Rule = Callable[[DomainModel, HostFacts, str], list[VmFinding]]


def judged(check: str, area: str, goal: str, w: dict[str, str], bad: bool, **kw) -> list[VmFinding]:
    """One finding: PASS when not bad; the goal's severity when bad; nothing when the goal does not judge it."""
    status = severity(w, goal)
    if status is None:
        return []
    return [VmFinding(check=check, area=area, status=status if bad else Status.PASS, **kw)]


def cpu_model(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    current = d.cpu_mode or "(none: QEMU's default qemu64)"
    if d.cpu_mode == "custom" and d.cpu_model:
        current = f"custom {d.cpu_model}"
    source = src.at("cpu-model-and-topology", src.RHEL)
    if d.domain_type != "kvm":
        return [VmFinding("cpu.model", "cpu", Status.NA, current, "host-passthrough (KVM only)",
                          "the domain runs under TCG (type='qemu'): host-passthrough needs KVM; judge it on a KVM "
                          "host", source)]
    w = weights("F", "F", "F", "W", "W")
    return judged(
        "cpu.model", "cpu", goal, w, d.cpu_mode not in ("host-passthrough", "host-model"),
        current=current, expected="host-passthrough (or host-model where VMs migrate between CPU generations)",
        why="a generic model hides AVX2/AVX-512, AES-NI, PCID/INVPCID and more: crypto, compression and memcpy "
            "run slower and every context switch pays for TLB flushes",
        source=source,
        edits=(XmlEdit(("cpu",), {"mode": "host-passthrough", "check": "none", "migratable": "on"},
                       remove=("model", "vendor", "feature"), remove_attrs=("match",)),),
        knobs={"nova": "nova.conf [libvirt] cpu_mode = host-passthrough (per compute host, not per flavor)",
               "cloudstack": "agent.properties guest.cpu.mode=host-passthrough on the KVM host, then restart the VM"},
    )


def topology(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if d.vcpus < 2:
        return []
    sockets, cores, threads = d.topology or (d.vcpus, 1, 1)
    bad = d.topology is None or sockets * cores * threads != d.vcpus or sockets > 1
    return judged(
        "cpu.topology", "cpu", goal, weights("W", "W", "W", "W", "W"), bad,
        current=f"{sockets} sockets × {cores} cores × {threads} threads"
        + (" (QEMU's default: one socket per vCPU)" if d.topology is None else ""),
        expected=f"1 socket × {d.vcpus} cores × 1 thread",
        why="a guest that sees one socket per vCPU schedules and licenses badly and splits its caches; threads "
            "only where vCPUs are pinned to host siblings",
        source=src.at("cpu-model-and-topology", src.RHEL),
        edits=(XmlEdit(("cpu", "topology"), {"sockets": "1", "dies": "1", "cores": str(d.vcpus), "threads": "1"}),),
        knobs={"nova": f"flavor extra specs hw:cpu_sockets=1 hw:cpu_cores={d.vcpus} hw:cpu_threads=1",
               "cloudstack": f"VM detail cpuCorePerSocket={d.vcpus}"},
    )


def pin_plan(d: DomainModel, host: HostFacts) -> tuple[dict[int, int], int | None]:
    """vCPU → host CPU, and the emulator's CPU: free CPUs (not CPU 0, not pinned by others) from one node first."""
    free = [c for c in host.cpus if c not in host.pinned_elsewhere and c != 0] or list(host.cpus)
    by_node = sorted(host.numa_nodes.items(), key=lambda kv: -len([c for c in kv[1] if c in free]))
    order = [c for _n, cpus in by_node for c in cpus if c in free] or free
    vcpu_map = {v: order[v % len(order)] for v in range(d.vcpus)}
    rest = [c for c in host.cpus if c not in vcpu_map.values()]
    return vcpu_map, (rest[0] if rest else None)


def pinning(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    pinned = [v for v in range(d.vcpus) if parse_cpuset(d.vcpu_pins.get(v, ""))]
    vcpu_map, emulator_cpu = pin_plan(d, host)
    edits = [XmlEdit(("cputune", f"vcpupin[@vcpu='{v}']"), {"vcpu": str(v), "cpuset": str(c)})
             for v, c in vcpu_map.items()]
    if emulator_cpu is not None:
        edits.append(XmlEdit(("cputune", "emulatorpin"), {"cpuset": str(emulator_cpu)}))
        # iothreads share the emulator's CPU: off the vCPUs' CPUs, which is what pinning them is for
        edits += [XmlEdit(("cputune", f"iothreadpin[@iothread='{i}']"), {"iothread": str(i),
                                                                         "cpuset": str(emulator_cpu)})
                  for i in range(1, d.iothreads + 1)]
    iothreads_unpinned = [i for i in range(1, d.iothreads + 1) if not parse_cpuset(d.iothread_pins.get(i, ""))]
    shared = len(set(vcpu_map.values())) < d.vcpus
    why = ("unpinned vCPUs wander between host CPUs (cold caches, remote memory) and queue behind other VMs' "
           "threads; a pinned neighbour makes it worse, since the scheduler cannot move it out of the way")
    if shared:
        why += f"; this host has too few free CPUs for {d.vcpus} dedicated vCPUs, the plan shares some"
    measured = host.contention.get(d.name)
    w = weights("F", "-", "W", "-", "-")
    if measured is not None and measured.contended:  # it did wait for CPUs: one step more severe for every goal
        w = {goal_: {"-": "W", "W": "F"}.get(mark, mark) for goal_, mark in w.items()}
        why += (f"; measured: its vCPUs waited for a host CPU {measured.p95_pct:.1f} % of the time at p95, above "
                f"the {CONTENDED_P95_PCT:g} % a latency class allows")
    return judged(
        "cpu.pinning", "cpu", goal, w, len(pinned) < d.vcpus or bool(iothreads_unpinned),
        current=f"{len(pinned)} of {d.vcpus} vCPUs pinned" + (f", emulator on {d.emulator_pin}" if d.emulator_pin
                                                              else ", emulator unpinned")
        + (f", {len(iothreads_unpinned)} of {d.iothreads} iothreads unpinned" if d.iothreads else "")
        + (f"; {measured.text()}" if measured is not None else ""),
        expected="every vCPU on its own host CPU, the emulator thread and iothreads elsewhere",
        why=why, source=src.at("cpu-tuning", src.RHEL),
        edits=tuple(edits),
        knobs={"nova": "flavor extra specs hw:cpu_policy=dedicated hw:emulator_threads_policy=isolate",
               "cloudstack": "VM detail extraconfig-1 = <cputune>…</cputune> as shown (needs the global setting "
                             "enable.additional.vm.configuration=true and cputune allowed in "
                             "allow.additional.vm.configuration.list.kvm)"},
        auto=d.vcpus <= len(host.cpus),
    )


def _cpu_nodes(d: DomainModel, host: HostFacts) -> set[int]:
    cpus: set[int] = set()
    for cpuset in d.vcpu_pins.values():
        cpus |= parse_cpuset(cpuset)
    return {n for c in cpus if (n := host.node_of(c)) is not None}


def numa(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if len(host.numa_nodes) < 2:
        return [VmFinding("cpu.numa", "cpu", Status.NA, "one host NUMA node", "memory on the node of its CPUs",
                          "the host has one NUMA node: nothing to place", src.at("numa-node-tuning"))]
    nodes = _cpu_nodes(d, host)
    planned = {n for c in pin_plan(d, host)[0].values() if (n := host.node_of(c)) is not None}
    node = min(nodes) if len(nodes) == 1 else min(planned) if planned else next(iter(host.numa_nodes))
    placed = d.numatune_mode in ("strict", "restrictive", "preferred") and d.numatune_nodeset == str(node)
    return judged(
        "cpu.numa", "cpu", goal, weights("F", "W", "W", "-", "W"), not placed or len(nodes) > 1,
        current=f"numatune {d.numatune_mode or 'none'} {d.numatune_nodeset}; vCPUs on nodes "
                f"{sorted(nodes) or 'any'}",
        expected=f"vCPUs on one node and memory strict on node {node}",
        why="memory on another node than its CPUs costs every cache miss a trip over the interconnect",
        source=src.at("numa-node-tuning", src.RHEL),
        edits=(XmlEdit(("numatune", "memory"), {"mode": "strict", "nodeset": str(node)}),),
        knobs={"nova": "flavor extra spec hw:numa_nodes=1 (with hw:cpu_policy=dedicated)",
               "cloudstack": "VM detail extraconfig-1 = <numatune>…</numatune> as shown"},
    )


def pmu(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    return judged(
        "cpu.pmu", "cpu", goal, weights("W", "-", "W", "-", "-"), d.pmu != "off",
        current=d.pmu or "(default: on)", expected="off unless someone profiles inside the guest",
        why="a virtual PMU makes the host save and restore performance counters on VM entries and exits",
        source=src.at("hypervisor-features", src.RHEL),
        edits=(XmlEdit(("features", "pmu"), {"state": "off"}),),
        knobs={"nova": "flavor extra spec hw:pmu=false (or image property hw_pmu=false)",
               "cloudstack": "no per-VM setting: extraconfig cannot change <features>; leave as is"},
    )


def hugepages(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    why = "4 KiB pages make the two-level (EPT) page walk long and the TLB small; huge pages shorten both"
    if not d.hugepages and host.hugepages_free_kib < d.memory_kib:
        why += (f"; the host has only {host.hugepages_free_kib // 1024} MiB of free huge pages for "
                f"{d.memory_kib // 1024} MiB: reserve them first (vm.nr_hugepages), or the VM will not start")
    return judged(
        "memory.hugepages", "memory", goal, weights("F", "W", "W", "-", "-"), not d.hugepages,
        current="huge pages" if d.hugepages else "4 KiB pages", expected="<hugepages/> backing",
        why=why, source=src.at("memory-backing", src.RHEL),
        edits=(XmlEdit(("memoryBacking",), children=("hugepages",)),),
        knobs={"nova": "flavor extra spec hw:mem_page_size=large",
               "cloudstack": "VM detail extraconfig-1 = <memoryBacking><hugepages/></memoryBacking>"},
        auto=host.hugepages_free_kib >= d.memory_kib,
    )


def ksm(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    return judged(
        "memory.ksm", "memory", goal, weights("W", "-", "-", "-", "-"), not d.nosharepages and not d.hugepages,
        current="mergeable by KSM" if not d.nosharepages else "<nosharepages/>",
        expected="<nosharepages/> (or huge pages, which KSM does not merge)",
        why="KSM merges and later un-merges pages under the guest: copy-on-write faults at unpredictable times",
        source=src.at("memory-backing", src.RHEL),
        edits=(XmlEdit(("memoryBacking",), children=("nosharepages",)),),
        knobs={"nova": "flavor extra spec hw:mem_page_size=large (huge pages are never merged)",
               "cloudstack": "VM detail extraconfig-1 = <memoryBacking><nosharepages/></memoryBacking>"},
    )


def locked(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    return judged(
        "memory.locked", "memory", goal, weights("W", "-", "-", "-", "-"), not d.locked,
        current="swappable" if not d.locked else "<locked/>", expected="<locked/>",
        why="a latency VM must never wait for its memory to come back from swap; locked memory also pins "
            "QEMU's own allocations (set a <hard_limit> so a leak cannot take the host)",
        source=src.at("memory-backing", src.RHEL),
        edits=(XmlEdit(("memoryBacking",), children=("locked",)),),
        knobs={"nova": "no flavor key: hw:cpu_realtime=yes with hw:mem_page_size implies locked memory",
               "cloudstack": "VM detail extraconfig-1 = <memoryBacking><locked/></memoryBacking>"},
    )


def balloon(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if d.balloon_model != "virtio":
        return judged(
            "memory.balloon", "memory", goal, weights("-", "-", "-", "W", "W"), True,
            current=f"memballoon {d.balloon_model}", expected="virtio balloon with stats, deflate-on-oom, "
            "free page reporting",
            why="without a balloon the host cannot see or take back memory the guest does not use",
            source=src.at("memory-balloon-device", src.RHEL),
            edits=(XmlEdit(("devices", "memballoon"), {"model": "virtio", "autodeflate": "on",
                                                      "freePageReporting": "on"}, children=("stats period=10",)),),
            knobs={"nova": "nova.conf [libvirt] mem_stats_period_seconds=10 (Nova always adds a virtio balloon)",
                   "cloudstack": "global setting vm.memballoon.disable=false and vm.memballoon.stats.period=10"},
            auto=False,  # a balloon is a PCI device: added on the next start, and the guest needs the driver
        )
    findings = judged(
        "memory.balloon.stats", "memory", goal, weights("-", "W", "-", "W", "W"), not d.balloon_stats_period,
        current=f"stats period {d.balloon_stats_period or 'off'}", expected="stats period 10 s",
        why="without stats the host sees no guest free/cache figures (kvmkit memory and sizing go blind)",
        source=src.at("memory-balloon-device"),
        edits=(XmlEdit(("devices", "memballoon", "stats"), {"period": "10"}),),
        knobs={"nova": "nova.conf [libvirt] mem_stats_period_seconds=10",
               "cloudstack": "global setting vm.memballoon.stats.period=10"},
    )
    findings += judged(
        "memory.balloon.deflate", "memory", goal, weights("-", "-", "-", "W", "W"), not d.balloon_deflate_on_oom,
        current="autodeflate off" if not d.balloon_deflate_on_oom else "autodeflate on", expected="autodeflate on",
        why="an inflated balloon should give memory back before the guest's OOM killer takes a process",
        source=src.at("memory-balloon-device"),
        edits=(XmlEdit(("devices", "memballoon"), {"autodeflate": "on"}),),
        knobs={"nova": "no Nova setting (libvirt default off): raise it with the operator",
               "cloudstack": "no CloudStack setting: VM detail extraconfig cannot change the balloon"},
    )
    fpr = weights("W", "-", "-", "W", "W")
    bad_fpr = d.balloon_free_page_reporting if goal == "latency" else not d.balloon_free_page_reporting
    findings += judged(
        "memory.balloon.free_page_reporting", "memory", goal, fpr, bad_fpr,
        current=f"freePageReporting {'on' if d.balloon_free_page_reporting else 'off'}",
        expected="off" if goal == "latency" else "on",
        why=("free page reporting makes the guest hand freed pages back, paid by faults when it reuses them"
             if goal == "latency" else "free page reporting returns memory the guest freed without a balloon "
             "target: denser hosts"),
        source=src.at("memory-balloon-device"),
        edits=(XmlEdit(("devices", "memballoon"), {"freePageReporting": "off" if goal == "latency" else "on"}),),
        knobs={"nova": "no Nova setting", "cloudstack": "no CloudStack setting"},
    )
    return findings


def kvmclock(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if d.domain_type != "kvm":
        return []
    return judged(
        "clock.kvmclock", "clock", goal, weights("F", "F", "F", "F", "F"), d.timers.get("kvmclock", True) is False,
        current="kvmclock off" if d.timers.get("kvmclock") is False else "kvmclock on",
        expected="kvmclock on", why="without kvm-clock the guest reads time through slow emulated devices",
        source=src.at("time-keeping", src.RHEL),
        edits=(XmlEdit(("clock", "timer[@name='kvmclock']"), {"name": "kvmclock", "present": "yes"}),),
        knobs={"nova": "Nova always enables kvmclock", "cloudstack": "CloudStack enables kvmclock by default "
               "(agent.properties kvmclock.disable=false)"},
    )


def hpet(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    return judged(
        "clock.hpet", "clock", goal, weights("W", "-", "W", "W", "W"), d.timers.get("hpet", True),
        current="hpet present" if d.timers.get("hpet", True) else "hpet off", expected="<timer name='hpet' "
        "present='no'/>", why="an emulated HPET costs VM exits on every read and keeps idle guests waking",
        source=src.at("time-keeping", src.RHEL),
        edits=(XmlEdit(("clock", "timer[@name='hpet']"), {"name": "hpet", "present": "no"}),),
        knobs={"nova": "Nova sets hpet present='no' itself on x86", "cloudstack": "no CloudStack setting"},
    )


HYPERV_WANTED = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "frequencies",
                 "tlbflush", "ipi")


def hyperv(d: DomainModel, host: HostFacts, goal: str) -> list[VmFinding]:
    if not d.windows:
        return []
    missing = [] if "passthrough" in d.hyperv else [e for e in HYPERV_WANTED if e not in d.hyperv]
    children = tuple(f"{e} state=on" + (" retries=8191" if e == "spinlocks" else "") for e in missing)
    return judged(
        "clock.hyperv", "clock", goal, weights("F", "F", "F", "F", "F"), bool(missing),
        current=f"missing {', '.join(missing)}" if missing else "all on", expected=", ".join(HYPERV_WANTED),
        why="a Windows guest without Hyper-V enlightenments spins on locks, reads slow timers and sends IPIs "
            "through emulated APIC writes",
        source=src.at("hypervisor-features", src.QEMU_HYPERV),
        edits=(XmlEdit(("features", "hyperv"), {"mode": "custom"}, children=children),),
        knobs={"nova": "image property os_type=windows (Nova then enables the enlightenments)",
               "cloudstack": "set the VM's OS type to a Windows one (CloudStack enables them for Windows guests)"},
    )


RULES: tuple[Rule, ...] = (cpu_model, topology, pinning, numa, pmu, hugepages, ksm, locked, balloon, kvmclock,
                           hpet, hyperv)
