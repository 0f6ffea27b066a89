"""The cost model, one configuration at a time, written to be read next to docs/plan.md.

This is the reference: `vectorised.py` computes the same numbers for millions of configurations at once and
the tests hold the two equal. It is also the "straightforward per-config Python loop" that `plan bench`
measures the vectorised path against. Pure: no I/O, no globals beyond the constants below.

    monthly cost = (hardware + deployment + node network) / lifetime + support + licences
                   + power + rack share + rack network share + operations
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvmkit.plan.inputs import Chassis, Cpu, Dimm, Drive, Licence, Policy, Site, VmShape

HOURS_PER_MONTH = 730.0
# Resources a VM consumes on a node, in the order ties are broken when naming the binding one.
NODE_RESOURCES = ("cpu", "ram", "storage", "iops")
BREAKDOWN_KEYS = (
    "hardware", "deployment", "node_network", "support", "licences", "power", "rack", "rack_network", "operations",
)  # fmt: skip
# floor() of a ratio such as 56.0 / 4.0 must not lose a VM to rounding in the last bit.
FLOOR_EPS = 1e-9


@dataclass(frozen=True)
class NodeSpec:
    """One configuration: a chassis filled with n CPUs, n DIMMs and n drives of one kind each."""

    chassis: Chassis
    cpu: Cpu
    n_cpu: int
    dimm: Dimm
    n_dimm: int
    drive: Drive
    n_drive: int

    @property
    def id(self) -> str:
        return (
            f"{self.chassis.name}/{self.n_cpu}x{self.cpu.name}/{self.n_dimm}x{self.dimm.name}"
            f"/{self.n_drive}x{self.drive.name}"
        )

    def components(self) -> dict[str, str | int]:
        return {
            "chassis": self.chassis.name, "cpu": self.cpu.name, "cpus": self.n_cpu, "dimm": self.dimm.name,
            "dimms": self.n_dimm, "drive": self.drive.name, "drives": self.n_drive,
        }  # fmt: skip


@dataclass(frozen=True)
class NodeEvaluation:
    spec: NodeSpec
    months: int
    breakdown: dict[str, float]  # monthly, per node, keyed by BREAKDOWN_KEYS
    average_w: float
    peak_w: float
    nodes_per_rack: int
    rack_binding: str  # "rack_space" or "rack_power"
    vcpu: float
    ram_gb: float
    storage_tb: float
    iops: float
    vms_per_node: int
    binding_resource: str  # one of NODE_RESOURCES

    @property
    def monthly_cost(self) -> float:
        return sum(self.breakdown.values())

    @property
    def feasible(self) -> bool:
        return self.vms_per_node >= 1 and self.nodes_per_rack >= 1

    def cost_per(self, amount: float) -> float:
        """Monthly node cost divided by a delivered amount; infinite when nothing is delivered."""
        return self.monthly_cost / amount if amount > 0 else math.inf


def hardware_price(spec: NodeSpec) -> float:
    return (
        spec.chassis.price + spec.n_cpu * spec.cpu.price + spec.n_dimm * spec.dimm.price
        + spec.n_drive * spec.drive.price
    )  # fmt: skip


def licence_units(licence: Licence, spec: NodeSpec) -> int:
    """How many units of a licence one node needs (per-core licences have per-socket and per-server floors)."""
    if licence.per == "node":
        return 1
    if licence.per == "socket":
        return spec.n_cpu
    per_socket = max(spec.cpu.cores, licence.min_cores_per_socket)
    return max(spec.n_cpu * per_socket, licence.min_cores_per_server)


def licence_monthly(licences: list[Licence], spec: NodeSpec, months: int) -> float:
    total = 0.0
    for licence in licences:
        unit = licence.price if licence.billing == "monthly" else licence.price / months
        total += licence_units(licence, spec) * unit
    return total


def node_watts(spec: NodeSpec, utilisation: float) -> tuple[float, float]:
    """(average W at the target utilisation, peak W): the power bill uses the first, rack limits the second."""
    memory_w = spec.n_dimm * spec.dimm.w
    idle_w = spec.chassis.idle_w + spec.n_cpu * spec.cpu.idle_w + memory_w
    max_w = spec.chassis.max_w + spec.n_cpu * spec.cpu.tdp_w + memory_w
    drives_w = spec.n_drive * spec.drive.w
    return idle_w + utilisation * (max_w - idle_w) + drives_w, max_w + drives_w


def nodes_per_rack(site: Site, u: int, peak_w: float) -> tuple[int, str]:
    by_space = site.rack_usable_u // u
    by_power = math.floor(site.rack_power_limit_kw * 1000.0 / peak_w + FLOOR_EPS) if peak_w > 0 else by_space
    return (by_space, "rack_space") if by_space <= by_power else (by_power, "rack_power")


def delivered(policy: Policy, spec: NodeSpec) -> tuple[float, float, float, float]:
    """(vCPU, GB RAM, TB, IOPS) a node sells, after host/storage reservations and oversubscription."""
    clock = spec.cpu.ghz / policy.reference_ghz if policy.reference_ghz else 1.0
    cores = spec.n_cpu * spec.cpu.cores - policy.host_reserved_cores - policy.storage_reserved_cores
    vcpu = max(0.0, cores * spec.cpu.threads_per_core * policy.cpu_ratio * clock)
    usable_gb = min(spec.n_dimm * spec.dimm.gb, spec.chassis.max_ram_gb)
    ram = max(0.0, (usable_gb - policy.host_reserved_gb - policy.storage_reserved_gb) * policy.ram_ratio)
    storage_tb = spec.n_drive * spec.drive.tb / policy.storage_replicas
    iops = spec.n_drive * spec.drive.iops / policy.storage_replicas
    return vcpu, ram, storage_tb, iops


def vms_that_fit(vm: VmShape, vcpu: float, ram_gb: float, storage_tb: float, iops: float) -> tuple[int, str]:
    """Whole VMs of a shape one node holds, and which resource runs out first."""
    limits = (
        vcpu / vm.vcpu,
        ram_gb / vm.ram_gb,
        storage_tb * 1000.0 / vm.disk_gb if vm.disk_gb > 0 else math.inf,
        iops / vm.iops if vm.iops > 0 else math.inf,
    )
    tightest = min(range(len(limits)), key=lambda i: limits[i])
    return math.floor(limits[tightest] + FLOOR_EPS), NODE_RESOURCES[tightest]


def evaluate_node(site: Site, policy: Policy, licences: list[Licence], spec: NodeSpec, months: int) -> NodeEvaluation:
    """Every monthly cost of one node over one lifetime, what it delivers and what binds it."""
    hardware = hardware_price(spec)
    average_w, peak_w = node_watts(spec, policy.target_utilisation)
    per_rack, rack_binding = nodes_per_rack(site, spec.chassis.u, peak_w)
    rack_share = site.rack_monthly_cost / per_rack if per_rack else math.inf
    rack_network_share = site.rack_network_cost / per_rack / months if per_rack else math.inf
    breakdown = {
        "hardware": hardware / months,
        "deployment": site.deployment_cost_per_node / months,
        "node_network": site.node_network_cost / months,
        "support": hardware * site.support_pct_per_year / 100.0 / 12.0,
        "licences": licence_monthly(licences, spec, months),
        "power": average_w * site.pue * HOURS_PER_MONTH / 1000.0 * site.electricity_price_per_kwh,
        "rack": rack_share,
        "rack_network": rack_network_share,
        "operations": site.operations_cost_per_node_month,
    }
    vcpu, ram_gb, storage_tb, iops = delivered(policy, spec)
    vms, binding = vms_that_fit(policy.reference_vm, vcpu, ram_gb, storage_tb, iops)
    return NodeEvaluation(
        spec=spec, months=months, breakdown=breakdown, average_w=average_w, peak_w=peak_w,
        nodes_per_rack=per_rack, rack_binding=rack_binding, vcpu=vcpu, ram_gb=ram_gb, storage_tb=storage_tb,
        iops=iops, vms_per_node=vms, binding_resource=binding,
    )  # fmt: skip
