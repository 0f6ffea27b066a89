"""Memory-pressure SLOs per VM class and what to do when one is broken. Pure: no libvirt, no clock, no files
except `load` (which only parses).

A policy file (TOML):

    window_s = 600             # judge the last 10 minutes of samples
    percentile = 95
    reclaim_neighbours = 2     # how many lower-priority VMs give memory back per violated class
    [classes.gold]
    priority = 3
    slo_pressure_pct = 1.0     # p95 of the VM's memory PSI some must stay ≤ 1 %
    domains = ["db-*"]
    [classes.bronze]
    priority = 1
    slo_pressure_pct = 10.0
    domains = ["*"]
    balloon_step_pct = 25      # a reclaimed neighbour's balloon shrinks by at most this share of its configured RAM
    floor_headroom_pct = 20    # … never below what its guest uses (its own stats) plus this share of configured RAM
    soft_limit = true          # and its memtune soft limit is set to its QEMU RSS after the shrink

What the actions are, all through libvirt (which owns the cgroups): a VM that breaks its SLO and is ballooned
below its maximum gets its balloon back to the maximum; the VMs of lower-priority classes that keep their own
SLO, with the most unused guest memory first, get a smaller balloon target — floored by what the guest itself
reports as used (balloon stats: MemTotal − MemAvailable) plus headroom, so no guest is squeezed into its own
swap or OOM — and optionally a memtune soft limit (cgroup v1: memory.soft_limit_in_bytes, reclaimed first under
host pressure; cgroup v2: libvirt writes memory.high). A VM without guest stats is never ballooned: there is no
floor to trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kvmkit.memory.model import MemoryReport, VmMemory
from kvmkit.sampling.percentile import percentile
from kvmkit.slo import policy as slo
from kvmkit.slo.policy import Action

KIB = 1024
MIN_CHANGE_KIB = 16 * 1024  # smaller balloon moves are noise, not reclaim
MIN_GUEST_KIB = 64 * 1024  # no target below this, whatever the stats say


class MemClass(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: int = Field(ge=0)
    slo_pressure_pct: float = Field(gt=0, lt=100)
    domains: list[str] = Field(min_length=1)
    balloon_step_pct: float = Field(default=25.0, gt=0, le=90)
    floor_headroom_pct: float = Field(default=20.0, ge=5, le=100)
    soft_limit: bool = True


class MemPolicy(slo.ClassPolicy):
    reclaim_neighbours: int = Field(default=2, ge=0)
    classes: dict[str, MemClass] = Field(min_length=1)


def load(path: Path) -> MemPolicy:
    return slo.load(path, MemPolicy)


class MemStanding(slo.Standing):
    """One VM judged against its class over the window, with its latest memory figures."""

    pressure_pct: float  # the policy's percentile of the VM's per-interval memory PSI some
    slo_pressure_pct: float | None
    violated: bool
    configured_bytes: int | None
    balloon_bytes: int | None
    rss_bytes: int | None
    guest_used_bytes: int | None  # MemTotal − MemAvailable inside the guest (balloon stats), latest
    guest_unused_bytes: int | None  # MemAvailable inside the guest, latest


def standings(policy: MemPolicy, reports: Iterable[MemoryReport]) -> list[MemStanding]:
    """Per domain over the reports given (callers pass only the window): percentile of pressure vs the class SLO."""
    pressure: dict[str, list[float]] = {}
    latest: dict[str, VmMemory] = {}
    for report in reports:
        for vm in report.vms:
            latest[vm.domain] = vm
            if vm.psi_some_pct is not None:
                pressure.setdefault(vm.domain, []).append(vm.psi_some_pct)
    out: list[MemStanding] = []
    for domain, vm in sorted(latest.items()):
        name = policy.class_of(domain)
        slo = policy.classes[name].slo_pressure_pct if name else None
        values = pressure.get(domain, [])
        value = round(percentile(values, policy.percentile), 3) if values else 0.0
        total, available = vm.detail.guest_total_bytes, vm.guest_available_bytes
        used = total - available if total is not None and available is not None else None
        out.append(
            MemStanding(
                domain=domain,
                vm_class=name,
                samples=len(values),
                pressure_pct=value,
                slo_pressure_pct=slo,
                violated=bool(values) and slo is not None and value > slo,
                configured_bytes=vm.configured_bytes,
                balloon_bytes=vm.balloon_bytes,
                rss_bytes=vm.rss_bytes,
                guest_used_bytes=used,
                guest_unused_bytes=available,
            )
        )
    return out


def balloon_floor_kib(vm: MemStanding, vm_class: MemClass) -> int | None:
    """What the guest itself uses plus headroom (a share of its configured RAM); None without guest stats."""
    if vm.guest_used_bytes is None or vm.configured_bytes is None:
        return None
    headroom = vm.configured_bytes * vm_class.floor_headroom_pct / 100
    return max(MIN_GUEST_KIB, int((vm.guest_used_bytes + headroom) // KIB))


def plan_actions(
    policy: MemPolicy, judged: list[MemStanding], current: Mapping[str, Mapping[str, int]]
) -> list[Action]:
    """Give violated VMs their balloon back; shrink balloons (and set soft limits) of lower-priority neighbours.

    `current` holds each running domain's live `balloon_kib`, `max_kib` and `soft_limit_kib` as libvirt reports
    them; a domain missing from it is left alone. Neighbours are taken with the most unused guest memory first;
    a neighbour is never shrunk below its floor, nor touched if it breaks its own SLO.
    """
    actions: dict[tuple[str, str], Action] = {}
    for vm in judged:
        if not vm.violated or vm.vm_class is None or vm.domain not in current:
            continue
        mine = current[vm.domain]
        why = f"p{policy.percentile:g} memory pressure {vm.pressure_pct:.2f} % > SLO {vm.slo_pressure_pct:g} %"
        if mine.get("balloon_kib", 0) + MIN_CHANGE_KIB <= mine.get("max_kib", 0):
            actions[(vm.domain, "balloon_kib")] = Action(vm.domain, "balloon_kib", mine["balloon_kib"],
                                                         mine["max_kib"], f"{why}: balloon back to its maximum")
        priority = policy.classes[vm.vm_class].priority
        for other in _richest_below(policy, judged, priority, current)[: policy.reclaim_neighbours]:
            other_class = policy.classes[other.vm_class or ""]
            params = current[other.domain]
            floor = balloon_floor_kib(other, other_class)
            balloon = params.get("balloon_kib")
            if floor is None or balloon is None or (other.domain, "balloon_kib") in actions:
                continue
            step = int((other.configured_bytes or 0) * other_class.balloon_step_pct / 100 // KIB)
            target = max(floor, balloon - step)
            if balloon - target < MIN_CHANGE_KIB:
                continue
            reason = (f"neighbour ({other.vm_class}, guest uses {(other.guest_used_bytes or 0) >> 20} MiB) of "
                      f"{vm.domain}: balloon {balloon >> 10} → {target >> 10} MiB (floor {floor >> 10} MiB)")
            actions[(other.domain, "balloon_kib")] = Action(other.domain, "balloon_kib", balloon, target, reason)
            if other_class.soft_limit and other.rss_bytes:
                # its RSS once the guest has handed the balloon's pages back, never below the balloon target
                soft = max(target, other.rss_bytes // KIB - (balloon - target))
                old = params.get("soft_limit_kib")
                if old is None or soft < old:
                    actions[(other.domain, "soft_limit_kib")] = Action(
                        other.domain, "soft_limit_kib", old, soft, f"neighbour of {vm.domain}: reclaimed first")
    return list(actions.values())


def _richest_below(
    policy: MemPolicy, judged: list[MemStanding], priority: int, current: Mapping[str, Mapping[str, int]]
) -> list[MemStanding]:
    candidates = [vm for vm in slo.neighbours_below(policy.classes, judged, priority, current)
                  if vm.guest_unused_bytes is not None]  # fmt: skip
    return sorted(candidates, key=lambda vm: vm.guest_unused_bytes or 0, reverse=True)


def strictest_slo(path: Path) -> float:
    """The lowest class SLO of a policy file: what `advise --policy` keeps."""
    return min(c.slo_pressure_pct for c in load(path).classes.values())
