"""How each check is fixed, kept apart from what the goals want (profiles) and from doing it (apply.py).

Four kinds of remedy, in the order an operator tries them:
    runtime     a sysfs/sysctl write that `kvmkit tune apply` performs (and can roll back)
    manual      a runtime action apply will not take because it disrupts running VMs or needs a daemon
    persistent  what makes it survive a reboot (sysctl.d, kernel command line, modprobe.d, udev, tuned)
    bios        firmware setup items, printed, never guessed at from the OS

The remedy texts are data for people; only `plan_writes` produces something that is executed, and it produces
(path, value) pairs, never shell strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from kvmkit.tune.checks import idle_states
from kvmkit.tune.hostfs import HostView, Unreadable
from kvmkit.tune.model import Reading, Remedy, Scalar

Text = Callable[[Scalar], str]
Plan = Callable[["HostView", Reading, list[str], list[Scalar]], list["Write"]]
SYSCTL_D = "/etc/sysctl.d/90-kvmkit-tune.conf"


@dataclass(frozen=True)
class Write:
    path: str
    value: str


@dataclass(frozen=True)
class Recipe:
    runtime_safe: bool = False  # apply may write reading.sources (or what `plan` returns)
    plan: Plan | None = None  # default: write the preferred value to each bad instance's source file
    runtime_hint: Text | None = None  # the runtime fix in words, when it is not "write the value to the source"
    # (manual, persistent) texts computed from the reading's facts, when it has them (e.g. how many pages)
    with_facts: Callable[[Scalar, dict[str, Scalar]], tuple[str, str]] | None = None
    manual: Text | None = None
    persistent: Text | None = None
    bios: Text | None = None


def sysfs_value(value: Scalar) -> str:
    """How a profile value is written to a sysfs/procfs file: booleans as 1/0."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return "" if value is None else str(value)


def _plan_sources(host: HostView | None, reading: Reading, bad: list[str], candidates: list[Scalar]) -> list[Write]:
    return [Write(reading.sources[i], sysfs_value(candidates[0])) for i in bad if i in reading.sources]


def _options(text: str) -> list[str]:
    """The words a choice file offers: 'always [madvise] never' → always, madvise, never."""
    return text.replace("[", " ").replace("]", " ").split()


def _plan_choice(available_file: Callable[[str], str]) -> Plan:
    """Write the first acceptable value this host offers: intel_pstate has no schedutil, and an old kernel may
    lack an I/O scheduler; a value the kernel would reject must not abort (and roll back) the whole apply."""

    def plan(host: HostView, reading: Reading, bad: list[str], candidates: list[Scalar]) -> list[Write]:
        writes = []
        for instance in bad:
            source = reading.sources.get(instance)
            if source is None:
                continue
            try:
                offered: list[str] | None = _options(host.read(available_file(source)))
            except Unreadable:
                offered = None  # the host does not say: try the preferred value and let the kernel judge
            pick = next((c for c in candidates if offered is None or sysfs_value(c) in offered), None)
            if pick is not None:
                writes.append(Write(source, sysfs_value(pick)))
        return writes

    return plan


def _plan_turbo(host: HostView | None, reading: Reading, bad: list[str], candidates: list[Scalar]) -> list[Write]:
    """intel_pstate's no_turbo is inverted (1 = turbo off); cpufreq boost is not."""
    writes = []
    for instance in bad:
        path = reading.sources.get(instance)
        if path:
            allowed = bool(candidates[0])
            writes.append(Write(path, ("0" if allowed else "1") if path.endswith("no_turbo") else sysfs_value(allowed)))
    return writes


def _plan_cstate_limit(host: HostView, reading: Reading, bad: list[str], candidates: list[Scalar]) -> list[Write]:
    """Disable every enabled idle state whose exit latency exceeds the target on the offending CPUs."""
    target = candidates[0]
    limit = float(target) if isinstance(target, int | float) and not isinstance(target, bool) else 0.0
    try:
        states = idle_states(host)
    except Unreadable:
        return []
    return [Write(s.disable_path, "1") for s in states if s.cpu in bad and not s.disabled and s.latency_us > limit]


def _plan_cstates_enable(host: HostView, reading: Reading, bad: list[str], candidates: list[Scalar]) -> list[Write]:
    try:
        states = idle_states(host)
    except Unreadable:
        return []
    return [Write(s.disable_path, "0") for s in states if s.cpu in bad and s.disabled]


def _hugepage_fixes(target: Scalar, facts: dict[str, Scalar]) -> tuple[str, str]:
    """Concrete page counts: 2 MiB pages to add now, 1 GiB pages to reserve at boot for all guests."""
    pct = float(target) if isinstance(target, int | float) and not isinstance(target, bool) else 100.0
    vm_mib, reserved_mib = int(facts.get("vm_mib") or 0), int(facts.get("reserved_mib") or 0)
    need_mib = max(0, math.ceil(vm_mib * pct / 100) - reserved_mib)
    add_2m = math.ceil(need_mib / 2)
    total_2m = int(facts.get("pages_2m") or 0) + add_2m
    gib = math.ceil(vm_mib * pct / 100 / 1024)
    return (
        f"sysctl -w vm.nr_hugepages={total_2m} (+{add_2m} × 2 MiB = {need_mib} MiB more; may fall short on a "
        "fragmented host: reserve at boot)",
        f"kernel command line: default_hugepagesz=1G hugepagesz=1G hugepages={gib}, and "
        "<memoryBacking><hugepages/></memoryBacking> in each domain",
    )


def _sysctl_file(key: str) -> Text:
    return lambda t: f"{SYSCTL_D}: {key} = {sysfs_value(t)}"


def _onoff(t: Scalar) -> str:
    return "Enabled" if t else "Disabled"


RECIPES: dict[str, Recipe] = {
    "cpufreq_driver": Recipe(
        persistent=lambda t: "kernel command line: intel_pstate=active (Intel HWP) or amd_pstate=active (AMD CPPC)",
        bios=lambda t: "Power management: hand P-states to the OS ('OS Control' / HWP native / CPPC enabled)",
    ),
    "cpufreq_governor": Recipe(
        runtime_safe=True,
        plan=_plan_choice(lambda src: src.replace("scaling_governor", "scaling_available_governors")),
        persistent=lambda t: f"tuned profile [cpu] governor={t} (or `cpupower frequency-set -g {t}` at boot)",
    ),
    "epp": Recipe(
        runtime_safe=True,
        plan=_plan_choice(
            lambda src: src.replace("energy_performance_preference", "energy_performance_available_preferences")
        ),
        persistent=lambda t: f"tuned profile [cpu] energy_performance_preference={t}",
    ),
    "epb": Recipe(
        runtime_safe=True,
        persistent=lambda t: f"`x86_energy_perf_policy {t}` at boot (tuned [cpu] energy_perf_bias)",
        bios=lambda t: "Energy Efficient Policy / Energy Performance Bias: let the OS set it",
    ),
    "turbo": Recipe(
        runtime_safe=True,
        plan=_plan_turbo,
        bios=lambda t: f"Turbo Boost (Intel) / Core Performance Boost (AMD): {_onoff(t)}",
    ),
    "cpuidle_driver": Recipe(
        persistent=lambda t: f"kernel command line: no idle=poll/halt; intel_idle or {t} must load",
        bios=lambda t: "C-states: enabled and reported to the OS (ACPI _CST)",
    ),
    "cstate_exit_latency_us": Recipe(
        runtime_safe=True,
        plan=_plan_cstate_limit,
        runtime_hint=lambda t: (
            f"echo 1 > /sys/devices/system/cpu/cpu*/cpuidle/stateN/disable for each state with "
            f"latency > {t} µs (kvmkit tune apply does exactly that)"
        ),
        persistent=lambda t: f"tuned [cpu] force_latency={t}, or intel_idle.max_cstate=1 on the kernel command line",
        bios=lambda t: "C-states: limit to C1/C1E (disable C6 and package C-states)",
    ),
    "cstates_disabled": Recipe(
        runtime_safe=True,
        plan=_plan_cstates_enable,
        runtime_hint=lambda t: "echo 0 > /sys/devices/system/cpu/cpu*/cpuidle/state*/disable",
        persistent=lambda t: "remove max_cstate / idle= limits and force_latency from the boot and tuned setup",
        bios=lambda t: "C-states: enable C6 and package C-states",
    ),
    "cmdline_max_cstate": Recipe(
        persistent=lambda t: (
            "kernel command line: remove intel_idle.max_cstate / processor.max_cstate"
            if t is None
            else f"kernel command line: intel_idle.max_cstate={t} processor.max_cstate={t}"
        )
    ),
    "cpu_dma_latency": Recipe(
        manual=lambda t: f"keep /dev/cpu_dma_latency open with a {t} µs request (what tuned does)",
        persistent=lambda t: f"tuned profile [cpu] force_latency={t}",
    ),
    "smt": Recipe(
        manual=lambda t: (
            f"echo {t} > /sys/devices/system/cpu/smt/control (offlines or onlines sibling CPUs: move pinned VMs first)"
        ),
        persistent=lambda t: "kernel command line: nosmt" if t in ("off", "forceoff") else "remove nosmt",
        bios=lambda t: f"Hyper-Threading / SMT: {'Disabled' if t in ('off', 'forceoff') else 'Enabled'}",
    ),
    "halt_poll_ns": Recipe(
        runtime_safe=True, persistent=lambda t: f"/etc/modprobe.d/kvm.conf: options kvm halt_poll_ns={t}"
    ),
    "thp_enabled": Recipe(
        runtime_safe=True,
        plan=_plan_choice(lambda src: src),
        persistent=lambda t: f"kernel command line: transparent_hugepage={t}",
    ),
    "thp_defrag": Recipe(
        runtime_safe=True,
        persistent=lambda t: f"a boot-time write of {t} to /sys/kernel/mm/transparent_hugepage/defrag (tuned [vm])",
    ),
    "hugepages_coverage_pct": Recipe(
        manual=lambda t: "sysctl -w vm.nr_hugepages=N (may fall short on a fragmented host: reserve at boot)",
        persistent=lambda t: (
            "kernel command line: default_hugepagesz=1G hugepagesz=1G hugepages=N, and "
            "<memoryBacking><hugepages/></memoryBacking> in each domain"
        ),
        with_facts=lambda t, facts: _hugepage_fixes(t, facts),
    ),
    "numa_balancing": Recipe(runtime_safe=True, persistent=_sysctl_file("kernel.numa_balancing")),
    "ksm_run": Recipe(
        runtime_safe=True,
        persistent=lambda t: "enable the ksm/ksmtuned services" if t else "disable the ksm/ksmtuned services",
    ),
    "swappiness": Recipe(runtime_safe=True, persistent=_sysctl_file("vm.swappiness")),
    "dirty_ratio": Recipe(runtime_safe=True, persistent=_sysctl_file("vm.dirty_ratio")),
    "dirty_background_ratio": Recipe(runtime_safe=True, persistent=_sysctl_file("vm.dirty_background_ratio")),
    "irqbalance": Recipe(
        manual=lambda t: "start irqbalance" if t else "stop irqbalance and pin IRQs by hand",
        persistent=lambda t: (
            "enable the irqbalance service; with isolated CPUs set IRQBALANCE_BANNED_CPULIST"
            if t
            else "disable the irqbalance service"
        ),
    ),
    "iommu_groups": Recipe(
        persistent=lambda t: "kernel command line: intel_iommu=on (Intel; AMD enables its IOMMU by default)",
        bios=lambda t: "Intel VT-d / AMD IOMMU (AMD-Vi): Enabled",
    ),
    "iommu_passthrough": Recipe(
        persistent=lambda t: "kernel command line: iommu=pt" if t else "kernel command line: remove iommu=pt"
    ),
    "kvm_device": Recipe(
        manual=lambda t: "modprobe kvm_intel (or kvm_amd)", bios=lambda t: "Intel VT-x / AMD SVM: Enabled"
    ),
    "vhost_net": Recipe(
        manual=lambda t: "modprobe vhost_net",
        persistent=lambda t: "/etc/modules-load.d/vhost_net.conf: vhost_net",
    ),
    "nohz_full": Recipe(persistent=lambda t: "kernel command line: nohz_full=<CPUs reserved for vCPUs>"),
    "isolcpus": Recipe(persistent=lambda t: "kernel command line: isolcpus=managed_irq,domain,<vCPU CPUs>"),
    "rcu_nocbs": Recipe(persistent=lambda t: "kernel command line: rcu_nocbs=<vCPU CPUs> (same list as nohz_full)"),
    "clocksource": Recipe(
        manual=lambda t: (
            f"echo {t} > /sys/devices/system/clocksource/clocksource0/current_clocksource "
            "(only if the kernel did not mark the TSC unstable: see dmesg)"
        ),
        persistent=lambda t: f"kernel command line: clocksource={t}",
    ),
    "mitigations": Recipe(persistent=lambda t: "kernel command line: remove mitigations=off"),
    "cpu_vulnerabilities": Recipe(
        persistent=lambda t: "update the kernel and the microcode package; remove per-bug '=off' parameters",
        bios=lambda t: "update the BIOS (it carries the microcode)",
    ),
    "io_scheduler": Recipe(
        runtime_safe=True,
        plan=_plan_choice(lambda src: src),
        persistent=lambda t: (
            '/etc/udev/rules.d/60-kvmkit-scheduler.rules: ACTION=="add|change", '
            f'KERNEL=="nvme[0-9]*n[0-9]*|vd[a-z]*", ATTR{{queue/scheduler}}="{t}"'
        ),
    ),
    "tuned_profile": Recipe(manual=lambda t: f"tuned-adm profile {t}"),
}


def _ranges(numbers: list[int]) -> str:
    """[0,1,2,3,5] → '0-3,5'."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def numbered_pattern(paths: list[str]) -> str | None:
    """Paths that differ in exactly one number, as one pattern: '…/cpu0/cpuidle/state3/disable' ×8 →
    '…/cpuN/cpuidle/state3/disable (N = 0-7)'. None when they differ in more than that."""
    if len(paths) < 2:
        return None
    split = [re.split(r"(\d+)", p) for p in paths]
    if len({len(parts) for parts in split}) != 1 or len({tuple(parts[0::2]) for parts in split}) != 1:
        return None
    varying = [i for i in range(1, len(split[0]), 2) if len({parts[i] for parts in split}) > 1]
    if len(varying) != 1:
        return None
    where = varying[0]
    pattern = "".join("N" if i == where else part for i, part in enumerate(split[0]))
    return f"{pattern} (N = {_ranges([int(parts[where]) for parts in split])})"


def shown_paths(paths: list[str]) -> str:
    return numbered_pattern(paths) or ", ".join(paths)


def runtime_text(writes: list[Write]) -> str:
    """The writes apply would make, as commands an operator can read (never executed as a string). Writes of one
    value to files that differ only by a number (policy0..7, cpu0..63) collapse into one line with N."""
    by_value: dict[str, list[str]] = {}
    for write in writes:
        by_value.setdefault(write.value, []).append(write.path)
    shown = []
    for value, paths in by_value.items():
        sysctl = [p for p in paths if p.startswith("/proc/sys/")]
        shown += [f"sysctl -w {p[len('/proc/sys/') :].replace('/', '.')}={value}" for p in sysctl]
        files = [p for p in paths if p not in sysctl]
        pattern = numbered_pattern(files)
        shown += [f"echo {value} > {pattern}"] if pattern else [f"echo {value} > {p}" for p in files]
    return "; ".join(shown)


def plan_writes(host: HostView, reading: Reading, bad: list[str], candidates: list[Scalar]) -> list[Write]:
    """The runtime-safe writes that would bring `bad` instances to an acceptable value, preferring
    candidates[0]; [] when the check has no safe runtime fix."""
    recipe = RECIPES.get(reading.check)
    if recipe is None or not recipe.runtime_safe or not candidates or candidates[0] is None:
        return []
    return (recipe.plan or _plan_sources)(host, reading, bad, candidates)


def remedies(reading: Reading, bad: list[str], target: Scalar, bios_override: str | None) -> list[Remedy]:
    """Every remedy for a failing check, most immediate first. Pure: reads nothing."""
    recipe = RECIPES.get(reading.check, Recipe())
    found = []
    if recipe.runtime_safe and target is not None:
        if recipe.runtime_hint is not None:
            found.append(Remedy(kind="runtime", text=recipe.runtime_hint(target)))
        else:
            plan = _plan_turbo if recipe.plan is _plan_turbo else _plan_sources
            writes = plan(None, reading, bad, [target])
            if writes:
                found.append(Remedy(kind="runtime", text=runtime_text(writes)))
    manual = recipe.manual(target) if recipe.manual else None
    persistent = recipe.persistent(target) if recipe.persistent else None
    if recipe.with_facts and reading.facts:
        manual, persistent = recipe.with_facts(target, reading.facts)
    if manual:
        found.append(Remedy(kind="manual", text=manual))
    if persistent:
        found.append(Remedy(kind="persistent", text=persistent))
    bios = bios_override or (recipe.bios(target) if recipe.bios else None)
    if bios:
        found.append(Remedy(kind="bios", text=bios))
    return found
