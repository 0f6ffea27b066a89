"""The cost model of costmodel.py over a whole ConfigSpace at once, with NumPy.

Same formulas, same order of operations, so the tests can hold every configuration equal to the
reference to 1e-9. Component attributes are gathered by fancy indexing (`cpu_price[space.cpu]`), which is
what makes a million configurations a few hundred milliseconds rather than a minute of Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvmkit.plan.costmodel import BREAKDOWN_KEYS, FLOOR_EPS, HOURS_PER_MONTH, NODE_RESOURCES
from kvmkit.plan.inputs import PlanInput, VmShape
from kvmkit.plan.space import ConfigSpace


@dataclass(frozen=True)
class Evaluation:
    """Per-configuration results, aligned with the ConfigSpace they came from."""

    space: ConfigSpace
    breakdown: dict[str, np.ndarray]  # monthly per node, BREAKDOWN_KEYS
    monthly_cost: np.ndarray
    average_w: np.ndarray
    peak_w: np.ndarray
    u: np.ndarray
    nodes_per_rack: np.ndarray
    rack_power_binds: np.ndarray  # bool: rack power, not rack space, limits nodes per rack
    vcpu: np.ndarray
    ram_gb: np.ndarray
    storage_tb: np.ndarray
    iops: np.ndarray
    vms_per_node: np.ndarray
    binding: np.ndarray  # index into NODE_RESOURCES

    def __len__(self) -> int:
        return len(self.space)

    @property
    def feasible(self) -> np.ndarray:
        return (self.vms_per_node >= 1) & (self.nodes_per_rack >= 1)

    def cost_per(self, amount: np.ndarray) -> np.ndarray:
        """Monthly cost per unit delivered; +inf where nothing is delivered (never negative)."""
        out = np.full(len(self), np.inf)
        with np.errstate(over="ignore"):  # a vanishing amount (1e-300 IOPS) is a price of +inf, as intended
            np.divide(self.monthly_cost, amount, out=out, where=amount > 0)
        return out

    @property
    def cost_per_vm(self) -> np.ndarray:
        return self.cost_per(np.where(self.feasible, self.vms_per_node, 0))

    def capacities(self) -> np.ndarray:
        """(n, 4) delivered vCPU, GB, GB of disk, IOPS: the columns a VM shape's needs are compared with."""
        return np.column_stack([self.vcpu, self.ram_gb, self.storage_tb * 1000.0, self.iops])

    def ranking(self, top: int | None = None) -> np.ndarray:
        """Feasible configuration rows, cheapest per reference VM first (ties: cheaper node first)."""
        rows = np.flatnonzero(self.feasible)
        per_vm = self.cost_per_vm[rows]
        if top is not None and top < len(rows):
            keep = np.argpartition(per_vm, top - 1)[:top]
            rows, per_vm = rows[keep], per_vm[keep]
        order = np.lexsort((self.monthly_cost[rows], per_vm))
        return rows[order]


def vms_of_shape(capacities: np.ndarray, vm: VmShape) -> tuple[np.ndarray, np.ndarray]:
    """Whole VMs of `vm` per node and the binding resource index, for rows of `capacities`."""
    needs = np.array([vm.vcpu, vm.ram_gb, vm.disk_gb, vm.iops])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a 1e-300 GB disk is "unlimited"
        limits = np.where(needs > 0, capacities / np.where(needs > 0, needs, 1.0), np.inf)
    binding = np.argmin(limits, axis=1)
    tightest = np.take_along_axis(limits, binding[:, None], axis=1)[:, 0]
    return np.floor(tightest + FLOOR_EPS).astype(np.int64), binding


def evaluate_space(plan: PlanInput, space: ConfigSpace) -> Evaluation:
    """Evaluate every configuration of `space` under the plan's site and policy."""
    site, policy = plan.site, plan.policy

    def attr(items: list, name: str) -> np.ndarray:
        return np.array([getattr(item, name) for item in items], dtype=np.float64)

    box, cpu, dimm, drive = space.chassis, space.cpu, space.dimm, space.drive
    n_cpu = space.n_cpu.astype(np.float64)
    n_dimm = space.n_dimm.astype(np.float64)
    n_drive = space.n_drive.astype(np.float64)
    months = space.months.astype(np.float64)
    cpu_cores = attr(plan.cpus, "cores")[cpu]

    hardware = (
        attr(plan.chassis, "price")[box] + n_cpu * attr(plan.cpus, "price")[cpu]
        + n_dimm * attr(plan.dimms, "price")[dimm] + n_drive * attr(plan.drives, "price")[drive]
    )  # fmt: skip
    licences = np.zeros(len(space))
    for licence in plan.licences:
        if licence.per == "node":
            units = np.ones(len(space))
        elif licence.per == "socket":
            units = n_cpu
        else:
            units = np.maximum(n_cpu * np.maximum(cpu_cores, licence.min_cores_per_socket),
                               licence.min_cores_per_server)  # fmt: skip
        unit_price = licence.price if licence.billing == "monthly" else licence.price / months
        licences = licences + units * unit_price

    memory_w = n_dimm * attr(plan.dimms, "w")[dimm]
    idle_w = attr(plan.chassis, "idle_w")[box] + n_cpu * attr(plan.cpus, "idle_w")[cpu] + memory_w
    max_w = attr(plan.chassis, "max_w")[box] + n_cpu * attr(plan.cpus, "tdp_w")[cpu] + memory_w
    drives_w = n_drive * attr(plan.drives, "w")[drive]
    average_w = idle_w + policy.target_utilisation * (max_w - idle_w) + drives_w
    peak_w = max_w + drives_w

    u = np.array([c.u for c in plan.chassis], dtype=np.int64)[box]
    by_space = site.rack_usable_u // u
    with np.errstate(divide="ignore"):
        by_power = np.where(
            peak_w > 0, np.floor(site.rack_power_limit_kw * 1000.0 / peak_w + FLOOR_EPS), by_space
        ).astype(np.int64)
    per_rack = np.minimum(by_space, by_power)
    rack_power_binds = by_power < by_space
    safe_rack = np.where(per_rack > 0, per_rack, 1)
    breakdown = {
        "hardware": hardware / months,
        "deployment": site.deployment_cost_per_node / months,
        "node_network": site.node_network_cost / months,
        "support": hardware * site.support_pct_per_year / 100.0 / 12.0,
        "licences": licences,
        "power": average_w * site.pue * HOURS_PER_MONTH / 1000.0 * site.electricity_price_per_kwh,
        "rack": np.where(per_rack > 0, site.rack_monthly_cost / safe_rack, np.inf),
        "rack_network": np.where(per_rack > 0, site.rack_network_cost / safe_rack / months, np.inf),
        "operations": np.full(len(space), site.operations_cost_per_node_month),
    }
    breakdown = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (len(space),)) for k, v in breakdown.items()}
    monthly = np.zeros(len(space))
    for key in BREAKDOWN_KEYS:
        monthly = monthly + breakdown[key]

    clock = attr(plan.cpus, "ghz")[cpu] / policy.reference_ghz if policy.reference_ghz else 1.0
    cores = n_cpu * cpu_cores - policy.host_reserved_cores - policy.storage_reserved_cores
    vcpu = np.maximum(0.0, cores * attr(plan.cpus, "threads_per_core")[cpu] * policy.cpu_ratio * clock)
    usable_gb = np.minimum(n_dimm * attr(plan.dimms, "gb")[dimm], attr(plan.chassis, "max_ram_gb")[box])
    ram = np.maximum(0.0, (usable_gb - policy.host_reserved_gb - policy.storage_reserved_gb) * policy.ram_ratio)
    storage_tb = n_drive * attr(plan.drives, "tb")[drive] / policy.storage_replicas
    iops = n_drive * attr(plan.drives, "iops")[drive] / policy.storage_replicas
    vms, binding = vms_of_shape(np.column_stack([vcpu, ram, storage_tb * 1000.0, iops]), policy.reference_vm)
    return Evaluation(
        space=space, breakdown=breakdown, monthly_cost=monthly, average_w=average_w, peak_w=peak_w, u=u,
        nodes_per_rack=per_rack, rack_power_binds=rack_power_binds, vcpu=vcpu, ram_gb=ram,
        storage_tb=storage_tb, iops=iops, vms_per_node=vms, binding=binding.astype(np.int8),
    )  # fmt: skip


def binding_name(index: int) -> str:
    return NODE_RESOURCES[index]
