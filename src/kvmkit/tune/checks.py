"""The checks: each reads one setting of a host through a HostView and returns a Reading.

A check only observes; what the value *should* be lives in the goal profiles (data), and how to fix it in
fixes.py. Values are parsed here into plain scalars so profiles can compare them (ints stay ints, on/off
settings become booleans). Anything unreadable raises Unreadable and `read_all` turns it into UNKNOWN.
The collectors live in collect_cpu.py and collect_host.py; this module is the registry profiles name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvmkit.tune.collect_cpu import (
    collect_cmdline_max_cstate,
    collect_cpu_dma_latency,
    collect_cpufreq_driver,
    collect_cstate_latency,
    collect_cstates_disabled,
    collect_epb,
    collect_turbo,
    idle_states,
    per_policy,
)
from kvmkit.tune.collect_host import (
    collect_hugepages_coverage,
    collect_io_scheduler,
    collect_iommu_groups,
    collect_iommu_passthrough,
    collect_irqbalance,
    collect_mitigations,
    collect_numa_nodes,
    collect_platform,
    collect_tuned_profile,
    collect_vulnerabilities,
    device_present,
)
from kvmkit.tune.hostfs import HostView, Unreadable
from kvmkit.tune.model import Reading
from kvmkit.tune.readers import (
    CPU,
    NO_CPUFREQ,
    Observed,
    bracketed,
    choice_file,
    cmdline_param,
    cmdline_params,
    int_file,
    text_file,
)

__all__ = ["CHECKS", "CHECKS_BY_ID", "Check", "bracketed", "cmdline_params", "idle_states", "read_all", "read_check"]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    area: str
    collect: Callable[[HostView], Observed]


CHECKS: tuple[Check, ...] = (
    Check("cpufreq_driver", "CPU frequency driver", "cpu", collect_cpufreq_driver),
    Check(
        "cpufreq_governor",
        "cpufreq governor",
        "cpu",
        per_policy("scaling_governor", NO_CPUFREQ, "scaling_available_governors"),
    ),
    Check(
        "epp",
        "Energy-performance preference (EPP)",
        "cpu",
        per_policy(
            "energy_performance_preference",
            "the cpufreq driver exposes no EPP (needs HWP/CPPC active mode)",
            "energy_performance_available_preferences",
        ),
    ),
    Check("epb", "Energy-performance bias (EPB)", "cpu", collect_epb),
    Check("turbo", "Turbo / boost allowed", "cpu", collect_turbo),
    Check("cpuidle_driver", "cpuidle driver", "cpu", text_file(f"{CPU}/cpuidle/current_driver")),
    Check("cstate_exit_latency_us", "Worst exit latency of enabled C-states (µs)", "cpu", collect_cstate_latency),
    Check("cstates_disabled", "Disabled C-states per CPU", "cpu", collect_cstates_disabled),
    Check("cmdline_max_cstate", "max_cstate kernel parameter", "cpu", collect_cmdline_max_cstate),
    Check("cpu_dma_latency", "PM-QoS cpu_dma_latency (µs)", "cpu", collect_cpu_dma_latency),
    Check("smt", "SMT (hyper-threading)", "cpu", text_file(f"{CPU}/smt/control")),
    Check("halt_poll_ns", "KVM halt polling (ns)", "cpu", int_file("/sys/module/kvm/parameters/halt_poll_ns")),
    Check(
        "thp_enabled",
        "Transparent hugepages",
        "memory",
        choice_file("/sys/kernel/mm/transparent_hugepage/enabled"),
    ),
    Check("thp_defrag", "THP defrag", "memory", choice_file("/sys/kernel/mm/transparent_hugepage/defrag")),
    Check("hugepages_coverage_pct", "Hugepages reserved vs VM memory (%)", "memory", collect_hugepages_coverage),
    Check("numa_nodes", "NUMA nodes", "memory", collect_numa_nodes),
    Check("numa_balancing", "Automatic NUMA balancing", "memory", int_file("/proc/sys/kernel/numa_balancing")),
    Check("ksm_run", "KSM (same-page merging)", "memory", int_file("/sys/kernel/mm/ksm/run")),
    Check("swappiness", "vm.swappiness", "memory", int_file("/proc/sys/vm/swappiness")),
    Check("dirty_ratio", "vm.dirty_ratio (%)", "memory", int_file("/proc/sys/vm/dirty_ratio")),
    Check(
        "dirty_background_ratio",
        "vm.dirty_background_ratio (%)",
        "memory",
        int_file("/proc/sys/vm/dirty_background_ratio"),
    ),
    Check("irqbalance", "irqbalance running", "kernel", collect_irqbalance),
    Check("iommu_groups", "IOMMU groups", "virt", collect_iommu_groups),
    Check("iommu_passthrough", "IOMMU passthrough mode (iommu=pt)", "virt", collect_iommu_passthrough),
    Check("kvm_device", "/dev/kvm present", "virt", device_present("/dev/kvm")),
    Check("vhost_net", "/dev/vhost-net present", "virt", device_present("/dev/vhost-net")),
    Check("nohz_full", "nohz_full CPUs", "kernel", cmdline_param("nohz_full")),
    Check("isolcpus", "isolcpus", "kernel", cmdline_param("isolcpus")),
    Check("rcu_nocbs", "rcu_nocbs CPUs", "kernel", cmdline_param("rcu_nocbs", "rcu_nocb")),
    Check(
        "clocksource",
        "Clocksource",
        "kernel",
        text_file("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
    ),
    Check("mitigations", "mitigations= kernel parameter", "kernel", collect_mitigations),
    Check("cpu_vulnerabilities", "CPU vulnerabilities", "kernel", collect_vulnerabilities),
    Check("io_scheduler", "I/O scheduler (NVMe/virtio/SSD)", "io", collect_io_scheduler),
    Check("tuned_profile", "Active tuned profile", "kernel", collect_tuned_profile),
    Check("platform", "CPU model, system vendor/product, BIOS version", "info", collect_platform),
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
    return Reading(
        check=check.id,
        values=observed.values,
        sources=observed.sources,
        detail=observed.detail,
        facts=observed.facts,
    )


def read_all(host: HostView) -> list[Reading]:
    return [read_check(host, check) for check in CHECKS]
