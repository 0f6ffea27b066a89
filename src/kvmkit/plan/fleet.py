"""The cheapest fleet for a plan's demand: candidate configurations from the evaluation, then milp.solve.

Candidates are the K cheapest configurations for each demand shape, for the reference VM, and for the
whole demand on one configuration (computed in closed form over every configuration). The model itself,
its two phases and its gap are described in milp.py.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from kvmkit.plan.costmodel import NODE_RESOURCES
from kvmkit.plan.inputs import PlanInput, VmShape
from kvmkit.plan.milp import FleetProblem, solve
from kvmkit.plan.problems import PlanProblem
from kvmkit.plan.vectorised import Evaluation, vms_of_shape

# Cheapest configurations kept per VM shape. Measured on the example and the bench catalog: 4 kept every
# plan within the 1 % gap in 0.3-0.7 s; 6 once ran into the 10 s limit (more near-identical mixes to rule out).
DEFAULT_CANDIDATES = 4


def shape_needs(vm: VmShape) -> np.ndarray:
    return np.array([vm.vcpu, vm.ram_gb, vm.disk_gb, vm.iops], dtype=np.float64)


def candidate_rows(plan: PlanInput, ev: Evaluation, months: int, per_shape: int) -> np.ndarray:
    """The `per_shape` cheapest configurations for each demand shape, for the reference VM, and for the
    whole demand on one configuration (closed form over every configuration, so --single-type is exact)."""
    usable = np.flatnonzero((ev.space.months == months) & (ev.nodes_per_rack >= 1))
    capacities = ev.capacities()[usable]
    chosen: set[int] = set()
    per_node = []  # whole VMs of each demand shape per node, per usable row
    for index, vm in enumerate([*plan.demand, plan.policy.reference_vm]):
        vms, _ = vms_of_shape(capacities, vm)
        if index < len(plan.demand):
            per_node.append(vms)
        fitting = np.flatnonzero(vms >= 1)
        if not len(fitting) and index < len(plan.demand):
            best = capacities.max(axis=0) if len(capacities) else np.zeros(4)
            raise PlanProblem(
                ("demand", index),
                f"no configuration can hold one VM of shape {vm.name!r} (needs {vm.vcpu:g} vCPU, "
                f"{vm.ram_gb:g} GB, {vm.disk_gb:g} GB disk, {vm.iops:g} IOPS; the largest node delivers "
                f"{best[0]:g} vCPU, {best[1]:g} GB, {best[2]:g} GB disk, {best[3]:g} IOPS)",
            )
        per_vm = ev.monthly_cost[usable[fitting]] / vms[fitting]
        chosen.update(int(r) for r in usable[fitting[_smallest(per_vm, per_shape)]])
    vms_per_node = np.column_stack(per_node)
    alone = np.flatnonzero(np.all(vms_per_node >= 1, axis=1))
    if len(alone):
        cost = _cost_alone(plan, ev, usable[alone], capacities[alone], vms_per_node[alone])
        chosen.update(int(r) for r in usable[alone[_smallest(cost, per_shape)]])
    return np.array(sorted(chosen), dtype=np.int64)


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Indexes of the `count` smallest values, smallest first (argpartition: no full sort of 200k rows)."""
    part = np.argpartition(values, count - 1)[:count] if count < len(values) else np.arange(len(values))
    return part[np.lexsort((part, values[part]))]


def _cost_alone(
    plan: PlanInput, ev: Evaluation, rows: np.ndarray, capacities: np.ndarray, vms_per_node: np.ndarray
) -> np.ndarray:
    """Monthly cost of hosting the whole demand on each row's configuration alone, in closed form:
    nodes = max(pooled load / capacity, per shape demand / VMs per node), racks by U and by peak W."""
    site = plan.site
    needs = np.array([shape_needs(d) for d in plan.demand])
    demand = np.array([d.count for d in plan.demand], dtype=np.float64)
    load = demand @ needs
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.max(np.where(load > 0, load / capacities, 0.0), axis=1)
    by_count = np.max(demand / vms_per_node, axis=1)
    nodes = np.ceil(np.maximum(pooled, by_count) - 1e-9)
    rack_w = site.rack_power_limit_kw * 1000.0
    racks = np.maximum(np.ceil(nodes * ev.u[rows] / site.rack_usable_u - 1e-9),
                       np.ceil(nodes * ev.peak_w[rows] / rack_w - 1e-9))  # fmt: skip
    node_cost = ev.monthly_cost[rows] - ev.breakdown["rack"][rows] - ev.breakdown["rack_network"][rows]
    return node_cost * nodes + (site.rack_monthly_cost + site.rack_network_cost / ev.space.months[rows]) * racks


class FleetNodes(BaseModel):
    id: str
    count: int
    monthly_cost_per_node: float  # without rack share: racks are costed once, below
    vms: dict[str, int]


class FleetPlan(BaseModel):
    months: int
    single_type: bool
    total_monthly_cost: float
    lower_bound: float
    node_monthly_cost: float
    rack_monthly_cost: float
    racks: int
    nodes: list[FleetNodes]
    total_nodes: int
    utilisation: dict[str, float]  # used / provided, per resource, rack space and rack power (peak)
    candidates: int
    gap: float
    within_gap: bool
    solve_seconds: float


def problem_for(plan: PlanInput, ev: Evaluation, rows: np.ndarray, months: int) -> FleetProblem:
    site = plan.site
    node_cost = ev.monthly_cost[rows] - ev.breakdown["rack"][rows] - ev.breakdown["rack_network"][rows]
    return FleetProblem(
        node_cost=node_cost, u=ev.u[rows].astype(np.float64), peak_w=ev.peak_w[rows],
        capacity=ev.capacities()[rows], needs=np.array([shape_needs(d) for d in plan.demand]),
        demand=np.array([d.count for d in plan.demand], dtype=np.float64), rack_u=site.rack_usable_u,
        rack_w=site.rack_power_limit_kw * 1000.0,
        rack_cost=site.rack_monthly_cost + site.rack_network_cost / months,
    )  # fmt: skip


def plan_fleet(
    plan: PlanInput,
    ev: Evaluation,
    months: int,
    single_type: bool = False,
    per_shape: int = DEFAULT_CANDIDATES,
    gap: float = 0.01,
    time_limit_s: float = 10.0,
    exact_placement: bool = False,
) -> FleetPlan:
    """The cheapest fleet for plan.demand over one lifetime; raises PlanProblem if a shape fits nowhere.

    With single_type the MILP is small (one binary per candidate), so it is solved with whole-VM placement
    to a proven optimum whatever `gap` and `exact_placement` say.
    """
    if single_type:
        gap, exact_placement = 0.0, True
    if not plan.demand:
        raise PlanProblem(("demand",), "the plan file has no [[demand]] entries to plan a fleet for")
    rows = candidate_rows(plan, ev, months, per_shape)
    problem = problem_for(plan, ev, rows, months)
    solution = solve(problem, single_type, gap, time_limit_s, exact_placement)
    used = problem.demand @ problem.needs
    provided = solution.nodes @ problem.capacity
    utilisation = {
        name: (round(float(used[k] / provided[k]), 4) if provided[k] > 0 else 0.0)
        for k, name in enumerate(NODE_RESOURCES)
    }
    racks = max(solution.racks, 1)
    utilisation["rack_space"] = round(float(problem.u @ solution.nodes) / (racks * problem.rack_u), 4)
    utilisation["rack_power"] = round(float(problem.peak_w @ solution.nodes) / (racks * problem.rack_w), 4)
    nodes = [
        FleetNodes(
            id=ev.space.config_id(plan, int(rows[j])),
            count=int(solution.nodes[j]),
            monthly_cost_per_node=round(float(problem.node_cost[j]), 4),
            vms={d.name: int(solution.placement[j, s]) for s, d in enumerate(plan.demand) if solution.placement[j, s]},
        )
        for j in np.flatnonzero(solution.nodes)
    ]
    node_cost = float(problem.node_cost @ solution.nodes)
    return FleetPlan(
        months=months, single_type=single_type, total_monthly_cost=round(solution.total_monthly_cost, 4),
        lower_bound=round(solution.lower_bound, 4),
        node_monthly_cost=round(node_cost, 4), rack_monthly_cost=round(problem.rack_cost * solution.racks, 4),
        racks=solution.racks, nodes=nodes, total_nodes=int(solution.nodes.sum()), utilisation=utilisation,
        candidates=len(rows), gap=gap, within_gap=solution.within_gap, solve_seconds=round(solution.seconds, 4),
    )  # fmt: skip
