"""Collectors for the CPU: frequency driver, governor, EPP/EPB, turbo, idle states, PM-QoS latency."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kvmkit.tune.hostfs import HostView, Unreadable
from kvmkit.tune.model import HOST, Scalar
from kvmkit.tune.readers import (
    CPU,
    NO_CPUFREQ,
    NO_CPUIDLE,
    Observed,
    cmdline_params,
    cpu_names,
    parse_int,
    per_file,
    single,
)

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
    return single(host, f"{CPU}/cpufreq/{policies[0]}/scaling_driver")


def per_policy(file: str, missing: str, offers: str) -> Callable[[HostView], Observed]:
    """One text value per cpufreq policy; the detail lists what the driver offers (read from `offers`, which is
    also where apply looks before writing, so a capture carries it too)."""

    def collect(host: HostView) -> Observed:
        policies = _policies(host)
        if not policies:
            raise Unreadable(NO_CPUFREQ)
        try:
            observed = per_file(host, {p: f"{CPU}/cpufreq/{p}/{file}" for p in policies}, lambda t, _p: t.strip())
        except Unreadable:
            raise Unreadable(missing) from None
        offered: set[str] = set()
        for policy in policies:
            try:
                offered.add(host.read(f"{CPU}/cpufreq/{policy}/{offers}").strip())
            except Unreadable:
                continue
        observed.detail = "offers: " + " | ".join(sorted(offered)) if offered else ""
        return observed

    return collect


def collect_epb(host: HostView) -> Observed:
    try:
        return per_file(host, {c: f"{CPU}/{c}/power/energy_perf_bias" for c in cpu_names(host)}, parse_int)
    except Unreadable as exc:
        if "does not exist" in exc.reason:
            raise Unreadable("no energy_perf_bias in sysfs (not an Intel CPU, or a VM)") from None
        raise


def collect_turbo(host: HostView) -> Observed:
    """True when turbo/boost is allowed. intel_pstate says no_turbo (inverted); acpi-cpufreq and amd-pstate say
    boost, globally or per policy."""
    no_turbo = f"{CPU}/intel_pstate/no_turbo"
    if host.exists(no_turbo):
        return single(host, no_turbo, lambda t, p: parse_int(t, p) == 0)
    if host.exists(f"{CPU}/cpufreq/boost"):
        return single(host, f"{CPU}/cpufreq/boost", lambda t, p: parse_int(t, p) == 1)
    policies = _policies(host)
    if policies and host.exists(f"{CPU}/cpufreq/{policies[0]}/boost"):
        return per_file(host, {p: f"{CPU}/cpufreq/{p}/boost" for p in policies}, lambda t, p: parse_int(t, p) == 1)
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
    for cpu in cpu_names(host):
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
                    latency_us=parse_int(host.read(f"{base}/latency"), f"{base}/latency"),
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
    limits = [parse_int(v or "", f"/proc/cmdline {n}") for n, v in found.items()]
    return Observed({HOST: min(limits)}, {}, " ".join(f"{n}={v}" for n, v in found.items()))


def collect_cpu_dma_latency(host: HostView) -> Observed:
    value = parse_int(host.probe("cpu_dma_latency"), "cpu_dma_latency")
    detail = "no PM-QoS limit requested" if value >= 2_000_000_000 else "a process holds /dev/cpu_dma_latency"
    return Observed({HOST: value}, {}, detail)
