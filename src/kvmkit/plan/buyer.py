"""What a buyer decides on, computed from the plan's records (pure): per lifetime the best configuration, what
binds it, what it costs per VM and in total, split into capex (paid up front) and opex (paid every month); the
assumptions behind every figure, with their values; human names for the parameters.

capex: hardware, deployment, node network (one-off per node) and rack network (one-off per rack) — the cost model
amortises them over the lifetime, so capex = their monthly share × months. opex: support, licences (perpetual ones
are amortised like capex by the model and counted here with licences), power, rack rent, operations."""

from __future__ import annotations

from dataclasses import dataclass

from kvmkit.plan.costmodel import NodeSpec, evaluate_node
from kvmkit.plan.fleet import FleetPlan
from kvmkit.plan.inputs import PlanInput
from kvmkit.plan.records import Configuration, EvaluationSummary
from kvmkit.plan.sensitivity import Sensitivity

CAPEX_KEYS = ("hardware", "deployment", "node_network", "rack_network")
OPEX_KEYS = ("support", "licences", "power", "rack", "operations")
COST_LABELS = {
    "hardware": "hardware", "deployment": "deployment", "node_network": "node network", "support": "vendor support",
    "licences": "licences", "power": "power (with PUE)", "rack": "rack rent", "rack_network": "rack network",
    "operations": "operations",
}  # fmt: skip
PARAMETER_LABELS = {
    "power_price": "Electricity price per kWh", "pue": "PUE (facility W per IT W)", "rack_cost": "Rack rent per month",
    "rack_kw": "Rack power limit (kW)", "operations": "Operations per node-month",
    "support_pct": "Vendor support (% of hardware per year)", "cpu_ratio": "vCPUs sold per hardware thread",
    "ram_ratio": "RAM sold per GB installed", "utilisation": "Average CPU utilisation",
    "replicas": "Storage replicas", "lifetime": "Lifetime (months)",
}  # fmt: skip
MONEY_FIELDS = {"electricity_price_per_kwh", "rack_monthly_cost", "rack_network_cost", "node_network_cost",
                "operations_cost_per_node_month", "deployment_cost_per_node"}
FIELD_LABELS = {
    "electricity_price_per_kwh": "Electricity price per kWh", "pue": "PUE (facility W per IT W)",
    "rack_monthly_cost": "Rack rent per month", "rack_usable_u": "Usable rack units (U)",
    "rack_power_limit_kw": "Rack power limit (kW)", "rack_network_cost": "Rack network, one-off per rack",
    "node_network_cost": "Node network, one-off per node",
    "operations_cost_per_node_month": "Operations per node-month",
    "deployment_cost_per_node": "Deployment, one-off per node",
    "support_pct_per_year": "Vendor support, % of hardware per year",
    "lifetimes_months": "Lifetimes compared (months)", "cpu_ratio": "vCPUs sold per hardware thread",
    "ram_ratio": "RAM sold per GB installed", "host_reserved_cores": "Cores kept for the hypervisor",
    "host_reserved_gb": "GB kept for the hypervisor", "storage_reserved_cores": "Cores kept for storage daemons",
    "storage_reserved_gb": "GB kept for storage daemons", "storage_replicas": "Storage replicas",
    "target_utilisation": "Average CPU utilisation (power bill)", "reference_ghz": "Reference clock (GHz)",
    "cpu_ratio_from": "CPU ratio taken from",
}  # fmt: skip


def money(value: float | None, currency: str) -> str:
    return "—" if value is None else f"{value:,.2f} {currency}"


@dataclass(frozen=True)
class Split:
    months: int
    capex: float  # one-off
    opex_per_month: float
    lifetime_total: float  # capex + opex over the lifetime

    def per(self, count: float) -> Split:
        return Split(self.months, self.capex / count, self.opex_per_month / count, self.lifetime_total / count)


def split(breakdown: dict[str, float], months: int) -> Split:
    capex = sum(breakdown.get(k, 0.0) for k in CAPEX_KEYS) * months
    opex = sum(breakdown.get(k, 0.0) for k in OPEX_KEYS)
    return Split(months=months, capex=capex, opex_per_month=opex, lifetime_total=capex + opex * months)


@dataclass(frozen=True)
class FleetTotals:
    nodes: int
    racks: int
    vms: int
    per_month: float
    split: Split | None  # None when a node's configuration cannot be read back from its id


def node_spec(plan: PlanInput, config_id: str) -> NodeSpec | None:
    """The NodeSpec a configuration id names ('chassis/2xCPU/16xDIMM/8xDRIVE/36m'), or None."""
    parts = config_id.split("/")
    if len(parts) != 5:
        return None
    try:
        counts = [part.split("x", 1) for part in parts[1:4]]
        (n_cpu, cpu), (n_dimm, dimm), (n_drive, drive) = ((int(n), name) for n, name in counts)
        return NodeSpec(chassis=next(c for c in plan.chassis if c.name == parts[0]),
                        cpu=next(c for c in plan.cpus if c.name == cpu), n_cpu=n_cpu,
                        dimm=next(d for d in plan.dimms if d.name == dimm), n_dimm=n_dimm,
                        drive=next(d for d in plan.drives if d.name == drive), n_drive=n_drive)  # fmt: skip
    except (ValueError, StopIteration):
        return None


def fleet_totals(plan: PlanInput, fleet: FleetPlan) -> FleetTotals:
    vms = sum(sum(n.vms.values()) for n in fleet.nodes)
    capex = fleet.racks * plan.site.rack_network_cost
    for nodes in fleet.nodes:
        spec = node_spec(plan, nodes.id)
        if spec is None:
            return FleetTotals(fleet.total_nodes, fleet.racks, vms, fleet.total_monthly_cost, None)
        node = evaluate_node(plan.site, plan.policy, plan.licences, spec, fleet.months)
        capex += nodes.count * sum(node.breakdown[k] for k in CAPEX_KEYS if k != "rack_network") * fleet.months
    opex = fleet.total_monthly_cost - capex / fleet.months
    return FleetTotals(fleet.total_nodes, fleet.racks, vms, fleet.total_monthly_cost,
                       Split(fleet.months, capex, opex, fleet.total_monthly_cost * fleet.months))


@dataclass(frozen=True)
class LifetimeView:
    months: int
    summary: EvaluationSummary
    fleet: FleetPlan | None
    fleet_totals: FleetTotals | None
    sensitivity: Sensitivity | None

    @property
    def best(self) -> Configuration | None:
        return self.summary.configurations[0] if self.summary.configurations else None

    @property
    def node_split(self) -> Split | None:
        return split(self.best.breakdown, self.months) if self.best else None

    @property
    def vm_split(self) -> Split | None:
        best, node = self.best, self.node_split
        return node.per(best.vms_per_node) if best and node and best.vms_per_node else None


def binds(c: Configuration) -> str:
    rack = "rack power" if c.rack_binding == "rack_power" else "rack space"
    return f"{c.binding_resource} per node, {rack} per rack"


def recommendation(views: list[LifetimeView], currency: str) -> str:
    """One paragraph: the cheapest configuration per VM at each lifetime, and which lifetime is cheaper."""
    usable = [v for v in views if v.best is not None and v.best.cost_per_vm_month is not None]
    if not usable:
        return "No configuration can host the reference VM: the plan has nothing to recommend."
    sentences = []
    for v in usable:
        best = v.best
        assert best is not None and best.cost_per_vm_month is not None
        total = (f"; the fleet of {v.fleet_totals.nodes} nodes in {v.fleet_totals.racks} racks costs "
                 f"{money(v.fleet_totals.per_month, currency)} per month, "
                 f"{money(v.fleet_totals.per_month * v.months, currency)} over the {v.months} months"
                 if v.fleet_totals else "")
        sentences.append(
            f"Over {v.months} months: buy {best.id.rsplit('/', 1)[0]} at {money(best.cost_per_vm_month, currency)} "
            f"per VM-month ({best.vms_per_node} VMs per node, bound by {binds(best)}){total}.")
    cheapest = min(usable, key=lambda v: v.best.cost_per_vm_month)  # type: ignore[union-attr,return-value]
    if len(usable) > 1:
        sentences.append(f"Per VM-month the {cheapest.months}-month lifetime is cheapest, if the hardware is "
                         f"kept and supported that long.")
    return " ".join(sentences)


def assumptions(plan: PlanInput, currency: str) -> list[tuple[str, str]]:
    """(label, value with unit) for every input a figure depends on."""
    rows: list[tuple[str, str]] = []
    for section in (plan.site, plan.policy):
        for name, value in section.model_dump().items():
            if name == "reference_vm" or value is None:
                continue
            label = FIELD_LABELS.get(name, name.replace("_", " "))
            shown = (money(value, currency) if name in MONEY_FIELDS
                     else ", ".join(map(str, value)) if isinstance(value, list) else f"{value:g}"
                     if isinstance(value, float) else str(value))  # fmt: skip
            rows.append((label, shown))
    vm = plan.policy.reference_vm
    rows.append(("Reference VM (prices are per this VM)",
                 f"{vm.vcpu:g} vCPU, {vm.ram_gb:g} GB RAM, {vm.disk_gb:g} GB disk, {vm.iops:g} IOPS"))
    if plan.demand:
        rows.append(("Demand (fleet)", ", ".join(f"{d.count:,} × {d.name}" for d in plan.demand)))
    rows.append(("Building blocks", f"{len(plan.chassis)} chassis, {len(plan.cpus)} CPUs, {len(plan.dimms)} DIMMs, "
                                    f"{len(plan.drives)} drives, {len(plan.licences)} licences"))
    rows.append(("Currency", f"{currency} (prices as given in the input, e.g. excluding VAT)"))
    return rows
