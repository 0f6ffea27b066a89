"""Congestion SLOs per VM class and what to do when one is broken. Pure: no libvirt, no clock, no files
except `load` (which only parses).

A policy file (TOML):

    window_s = 600            # judge the last 10 minutes of samples
    percentile = 95
    cap_neighbours = 1        # how many of the noisiest lower-priority VMs to cap per violated class
    [classes.gold]
    priority = 3              # higher is more important
    slo_congestion_pct = 2.0  # p95 of the VM's mean vCPU contention must stay ≤ 2 % (own throttling excluded)
    domains = ["db-*", "gold-*"]
    shares_boost = 2.0        # multiply cpu_shares of a suffering VM (up to max_shares)
    [classes.bronze]
    priority = 1
    slo_congestion_pct = 10.0
    domains = ["*"]
    cap_pct = 50              # a capped neighbour gets vcpu_quota = 50 % of vcpu_period per vCPU

Classes are matched in file order; the first whose glob matches a domain name wins. Actions only ever use
libvirt scheduler parameters (cpu_shares, vcpu_period, vcpu_quota), so libvirt stays the owner of the cgroups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kvmkit.congestion.model import IntervalReport
from kvmkit.sampling.percentile import percentile
from kvmkit.slo import policy as slo
from kvmkit.slo.policy import Action

__all__ = ["Action", "Policy", "VmClass", "VmStanding", "load", "plan_actions", "standings", "strictest_slo"]

DEFAULT_SHARES = 1024  # libvirt's default cpu_shares on cgroup v1 (v2's weight 100 is reported as 100)
DEFAULT_PERIOD_US = 100_000


class VmClass(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: int = Field(ge=0)
    slo_congestion_pct: float = Field(gt=0, lt=100)
    domains: list[str] = Field(min_length=1)
    shares_boost: float = Field(default=2.0, gt=1, le=100)
    max_shares: int = Field(default=10_000, ge=2, le=262_144)
    cap_pct: float = Field(default=50.0, gt=0, le=100)


class Policy(slo.ClassPolicy):
    cap_neighbours: int = Field(default=1, ge=0)
    classes: dict[str, VmClass] = Field(min_length=1)


def load(path: Path) -> Policy:
    return slo.load(path, Policy)


class VmStanding(slo.Standing):
    """One VM judged against its class over the window."""

    congestion_pct: float  # the policy's percentile of the VM's per-interval congestion (contention + throttled)
    contention_pct: float = 0.0  # the same percentile of contention: what the SLO judges
    throttled_pct: float | None = None  # mean share of the window its vCPUs sat throttled by their own quota
    utilisation_pct: float  # mean per-vCPU utilisation over the window
    vcpus: int
    slo_congestion_pct: float | None
    violated: bool


def standings(policy: Policy, reports: Iterable[IntervalReport]) -> list[VmStanding]:
    """Per domain over the reports given (callers pass only the window): percentile vs the class SLO."""
    congestion: dict[str, list[float]] = {}
    contention: dict[str, list[float]] = {}
    throttled: dict[str, list[float]] = {}
    utilisation: dict[str, list[float]] = {}
    vcpus: dict[str, int] = {}
    for report in reports:
        for vm in report.vms:
            if not vm.vcpus:
                continue
            congestion.setdefault(vm.domain, []).append(vm.congestion_pct)
            contention.setdefault(vm.domain, []).append(vm.slo_pct)
            if vm.throttled_pct is not None:
                throttled.setdefault(vm.domain, []).append(vm.throttled_pct)
            utilisation.setdefault(vm.domain, []).append(vm.utilisation_pct)
            vcpus[vm.domain] = vm.vcpus_allocated
    out: list[VmStanding] = []
    for domain, values in sorted(congestion.items()):
        name = policy.class_of(domain)
        slo = policy.classes[name].slo_congestion_pct if name else None
        judged = round(percentile(contention[domain], policy.percentile), 3)
        capped = throttled.get(domain)
        out.append(
            VmStanding(
                domain=domain,
                vm_class=name,
                samples=len(values),
                congestion_pct=round(percentile(values, policy.percentile), 3),
                contention_pct=judged,
                throttled_pct=round(sum(capped) / len(capped), 3) if capped else None,
                utilisation_pct=round(sum(utilisation[domain]) / len(utilisation[domain]), 3),
                vcpus=vcpus[domain],
                slo_congestion_pct=slo,
                violated=slo is not None and judged > slo,  # contention only: its own cap is not a breach
            )
        )
    return out


def plan_actions(policy: Policy, judged: list[VmStanding], current: Mapping[str, Mapping[str, int]]) -> list[Action]:
    """Raise the weight of VMs that break their SLO; cap the noisiest VMs of lower-priority classes.

    `current` holds each domain's scheduler parameters as libvirt reports them now; a domain missing from it
    is left alone (it may have stopped). Caps never touch a class at or above the suffering one, nor a VM that
    breaks its own SLO, and never loosen a cap already tighter.
    """
    actions: dict[tuple[str, str], Action] = {}
    for vm in judged:
        if not vm.violated or vm.vm_class is None or vm.domain not in current:
            continue
        vm_class = policy.classes[vm.vm_class]
        old_shares = current[vm.domain].get("cpu_shares")
        base = old_shares or DEFAULT_SHARES
        new_shares = min(vm_class.max_shares, int(base * vm_class.shares_boost))
        if new_shares > base:
            why = f"p{policy.percentile:g} contention {vm.contention_pct:.2f} %"
            why += f" > SLO {vm_class.slo_congestion_pct:g} % ({vm.vm_class}): raise weight"
            actions[(vm.domain, "cpu_shares")] = Action(vm.domain, "cpu_shares", old_shares, new_shares, why)
        for noisy in _noisiest_below(policy, judged, vm_class.priority, current)[: policy.cap_neighbours]:
            cap_pct = policy.classes[noisy.vm_class or ""].cap_pct
            params = current[noisy.domain]
            quota = int((params.get("vcpu_period") or DEFAULT_PERIOD_US) * cap_pct / 100)
            old_quota = params.get("vcpu_quota")
            if old_quota is not None and 0 < old_quota <= quota:
                continue
            why = f"noisy neighbour ({noisy.vm_class}, {noisy.utilisation_pct:.1f} % per vCPU)"
            why += f" of {vm.domain}: cap at {cap_pct:g} % per vCPU"
            action = Action(noisy.domain, "vcpu_quota", old_quota, quota, why)
            actions.setdefault((noisy.domain, "vcpu_quota"), action)
    return list(actions.values())


def _noisiest_below(
    policy: Policy, judged: list[VmStanding], priority: int, current: Mapping[str, Mapping[str, int]]
) -> list[VmStanding]:
    candidates = slo.neighbours_below(policy.classes, judged, priority, current)
    return sorted(candidates, key=lambda vm: vm.utilisation_pct * vm.vcpus, reverse=True)


def strictest_slo(path: Path) -> float:
    """The lowest class SLO of a policy file: what `advise --policy` keeps."""
    return min(c.slo_congestion_pct for c in load(path).classes.values())
