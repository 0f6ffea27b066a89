"""The fleet MILP over plain arrays (no catalog, no files): nodes of each type and racks, by HiGHS.

Variables: x_j nodes of candidate configuration j, y_js VMs of shape s placed on type j (both integer),
r racks (integer) and, with --single-type, z_j binary "type j is the one used".

    minimise   sum_j node_cost_j x_j + rack_cost r        (node cost here excludes the rack share)
    subject to sum_j y_js >= demand_s                                  every VM placed
               sum_s need_sk y_js <= capacity_jk x_j   for k in cpu, ram, disk, iops   per node type
               y_js <= per_node_js x_j      per_node_js: whole VMs of shape s one node of type j holds
               sum_j u_j x_j <= rack_u r ;  sum_j peak_w_j x_j <= rack_w r             racks shared by all types
               x_j <= ub_j z_j ; sum_j z_j = 1                                       only with --single-type
    y_js = 0 where one VM of shape s does not fit a node of type j.

Capacity is pooled per node type (the VMs on type j fit the sum of type j's nodes), the usual
capacity-planning assumption, tightened so that no VM straddles two nodes (the per_node rows); exact
per-node bin packing of *mixed* shapes is not modelled. The node types are
the candidates fleet.py picks, so the optimum is over those.

Near-identical candidates make proving the last 0.5 % of optimality slow (many mixes cost the same within
one node), so the solve stops at a relative gap (default 1 %) and reports HiGHS' lower bound next to the
cost: the answer is never more than `gap` above the best possible over the candidates. By default y is
continuous in a first solve (phase 1); its VMs are then rounded to whole ones, adding a node where rounding
overfills a type, and, if that plan is not within the gap, a second small MILP (phase 2) re-places whole VMs
over the types phase 1 chose with node counts within NEAR of phase 1's. Phase 1's bound is a valid lower bound
for the result. `exact_placement` keeps y integer in one solve: slower; the brute-force tests use it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from kvmkit.errors import OperationFailed

# Phase 2 looks for whole-VM placements within this many nodes of phase 1's count for each type: enough to
# absorb rounding (at most one VM per type and shape moves), small enough to keep the second MILP quick.
NEAR = 2
# Phase 1 is solved to half the requested gap: rounding to whole VMs costs up to about half a percent on
# realistic demands, and the final plan must still be within `gap` of phase 1's lower bound.
PHASE1 = 0.5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetProblem:
    """The pure MILP input: J candidate node types, S VM shapes, one kind of rack."""

    node_cost: np.ndarray  # (J,) monthly per node, without rack costs
    u: np.ndarray  # (J,)
    peak_w: np.ndarray  # (J,)
    capacity: np.ndarray  # (J, 4) vCPU, GB RAM, GB disk, IOPS
    needs: np.ndarray  # (S, 4)
    demand: np.ndarray  # (S,) VM counts
    rack_u: int
    rack_w: float
    rack_cost: float  # monthly per rack, network amortised

    def restrict(self, types: np.ndarray) -> FleetProblem:
        """The same problem over a subset of the node types."""
        return replace(self, node_cost=self.node_cost[types], u=self.u[types], peak_w=self.peak_w[types],
                       capacity=self.capacity[types])  # fmt: skip

    def fits(self) -> np.ndarray:
        """(J, S) one VM of shape s fits an empty node of type j."""
        return np.all(self.needs[None, :, :] <= self.capacity[:, None, :] + 1e-9, axis=2)

    def per_node(self) -> np.ndarray:
        """(J, S) whole VMs of shape s one node of type j holds when it holds nothing else."""
        needs = self.needs[None, :, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = np.where(needs > 0, self.capacity[:, None, :] / np.where(needs > 0, needs, 1.0), np.inf)
        return np.floor(limits.min(axis=2) + 1e-9).astype(np.int64)

    def nodes_needed(self, placement: np.ndarray) -> np.ndarray:
        """(J,) nodes each type needs for a (J, S) placement: pooled resources, and no more VMs of a shape
        than fit node by node (a 48-vCPU VM cannot straddle two 32-vCPU nodes)."""
        load = placement @ self.needs  # (J, 4)
        per_node = self.per_node()
        with np.errstate(divide="ignore", invalid="ignore"):
            pooled = np.where(load > 0, load / np.where(self.capacity > 0, self.capacity, 1.0), 0.0).max(axis=1)
            by_count = np.where(placement > 0, placement / np.maximum(per_node, 1), 0.0).max(axis=1)
        return np.ceil(np.maximum(pooled, by_count) - 1e-9).astype(np.int64)

    def node_bounds(self) -> np.ndarray:
        """Upper bound on x_j: the nodes of type j that would host, alone, every shape it can."""
        return self.nodes_needed(self.fits() * self.demand[None, :])


@dataclass(frozen=True)
class FleetSolution:
    nodes: np.ndarray  # (J,) integer
    placement: np.ndarray  # (J, S) integer
    racks: int
    total_monthly_cost: float
    lower_bound: float  # no plan over these candidates costs less
    within_gap: bool  # cost is within the requested gap of the lower bound
    seconds: float


def solve(
    problem: FleetProblem,
    single_type: bool = False,
    gap: float = 0.01,
    time_limit_s: float = 10.0,
    exact_placement: bool = False,
) -> FleetSolution:
    """Cheapest nodes, placement and racks; see the module docstring for the model and the two phases."""
    started = time.perf_counter()
    first_gap = gap if exact_placement else gap * PHASE1
    nodes, placement, bound = _run_milp(problem, single_type, first_gap, time_limit_s, exact_placement)
    assert nodes is not None and placement is not None  # phase 1 raises rather than return nothing
    if exact_placement:
        best = _priced(problem, nodes, placement.astype(np.int64))
    else:
        # Phase 1 chose the types; rounding its placement is one plan, phase 2 (integer placement over the
        # chosen types, node counts within NEAR of phase 1's: a small MILP) often a cheaper one.
        # Phase 1's bound stays a valid lower bound for both.
        whole = _place_whole_vms(problem, nodes, placement)
        best = _priced(problem, np.maximum(nodes, problem.nodes_needed(whole)), whole)
        used = np.flatnonzero(nodes)
        remaining = time_limit_s - (time.perf_counter() - started)
        if remaining > 0 and len(used) and best.cost - bound > gap * best.cost:
            sub = problem.restrict(used)
            sub_nodes, sub_placement, _ = _run_milp(
                sub, single_type, gap, remaining, integer_placement=True, nodes_near=nodes[used]
            )
            if sub_nodes is not None:
                full_nodes = np.zeros_like(nodes)
                full_nodes[used] = sub_nodes
                full_placement = np.zeros_like(whole)
                full_placement[used] = sub_placement.astype(np.int64)
                second = _priced(problem, full_nodes, full_placement)
                best = min(best, second, key=lambda plan: plan.cost)
    return FleetSolution(
        nodes=best.nodes, placement=best.placement, racks=best.racks, total_monthly_cost=best.cost,
        lower_bound=min(bound, best.cost), within_gap=best.cost - bound <= gap * best.cost + 1e-6,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


@contextmanager
def _solver_chatter_to_log() -> Iterator[None]:
    """HiGHS (scipy 1.17) writes debug lines straight to file descriptor 1, which would corrupt --json.

    Point fd 1 at a temporary file for the solve and pass whatever was written to the debug log.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            chatter = sink.read().decode(errors="replace").strip()
            if chatter:
                log.debug("HiGHS: %s", chatter)


class _Plan(NamedTuple):
    nodes: np.ndarray
    placement: np.ndarray
    cost: float
    racks: int


def _priced(problem: FleetProblem, nodes: np.ndarray, placement: np.ndarray) -> _Plan:
    """The plan's monthly cost with the fewest racks that hold its nodes."""
    racks = max(math.ceil(float(problem.u @ nodes) / problem.rack_u - 1e-9),
                math.ceil(float(problem.peak_w @ nodes) / problem.rack_w - 1e-9), 0)  # fmt: skip
    return _Plan(nodes, placement, float(problem.node_cost @ nodes + problem.rack_cost * racks), racks)


def _run_milp(
    problem: FleetProblem,
    single_type: bool,
    gap: float,
    time_limit_s: float,
    integer_placement: bool,
    nodes_near: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """One HiGHS solve: (nodes, placement (fractional unless integer_placement), lower bound).

    (None, None, inf) when a phase-2 solve (nodes_near given) finds nothing in the time left.
    """
    n_types, n_shapes = problem.capacity.shape[0], problem.needs.shape[0]
    fits = problem.fits()
    per_node = problem.per_node()
    ub = problem.node_bounds()
    n_x, n_y = n_types, n_types * n_shapes
    n_z = n_types if single_type else 0
    r_col = n_x + n_y
    n_vars = r_col + 1 + n_z

    def y_col(j: int, s: int) -> int:
        return n_x + j * n_shapes + s

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def add_row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        row = len(lower)
        for col, val in entries:
            rows.append(row)
            cols.append(col)
            vals.append(val)
        lower.append(lo)
        upper.append(hi)

    for s in range(n_shapes):
        add_row([(y_col(j, s), 1.0) for j in range(n_types) if fits[j, s]], float(problem.demand[s]), np.inf)
    for j in range(n_types):
        for k in range(problem.needs.shape[1]):
            entries = [(y_col(j, s), float(problem.needs[s, k])) for s in range(n_shapes)
                       if fits[j, s] and problem.needs[s, k] > 0]  # fmt: skip
            if entries:
                add_row([*entries, (j, -float(problem.capacity[j, k]))], -np.inf, 0.0)
        for s in np.flatnonzero(fits[j]):  # whole VMs per node: y_js <= per_node_js x_j
            add_row([(y_col(j, int(s)), 1.0), (j, -float(per_node[j, s]))], -np.inf, 0.0)
    add_row([*((j, float(problem.u[j])) for j in range(n_types)), (r_col, -float(problem.rack_u))], -np.inf, 0)
    add_row([*((j, float(problem.peak_w[j])) for j in range(n_types)), (r_col, -problem.rack_w)], -np.inf, 0)
    if single_type:
        for j in range(n_types):
            add_row([(j, 1.0), (r_col + 1 + j, -float(ub[j]))], -np.inf, 0.0)
        add_row([(r_col + 1 + j, 1.0) for j in range(n_types)], 1.0, 1.0)

    cost = np.zeros(n_vars)
    cost[:n_x] = problem.node_cost
    cost[r_col] = problem.rack_cost
    var_hi = np.zeros(n_vars)
    var_hi[:n_x] = ub
    var_lo = np.zeros(n_vars)
    if nodes_near is not None:  # phase 2: stay within NEAR nodes of phase 1's answer per type
        var_lo[:n_x] = np.maximum(nodes_near - NEAR, 0)
        var_hi[:n_x] = np.minimum(nodes_near + NEAR, np.maximum(ub, nodes_near + 1))
    var_hi[n_x:r_col] = (fits * problem.demand[None, :]).ravel()
    var_hi[r_col] = np.inf
    var_hi[r_col + 1 :] = 1.0
    matrix = coo_array((vals, (rows, cols)), shape=(len(lower), n_vars)).tocsr()
    integrality = np.ones(n_vars)
    if not integer_placement:
        integrality[n_x:r_col] = 0
    with _solver_chatter_to_log():
        result = milp(
            cost, integrality=integrality, bounds=Bounds(var_lo, var_hi),
            constraints=LinearConstraint(matrix, lower, upper),
            options={"time_limit": time_limit_s, "mip_rel_gap": gap},
        )  # fmt: skip
    if result.x is None:
        if nodes_near is not None:  # phase 2 is an improvement attempt; phase 1's rounded plan stands
            return None, None, math.inf
        raise OperationFailed(f"fleet MILP found no plan: {result.message}")
    nodes = np.rint(result.x[:n_x]).astype(np.int64)
    placement = result.x[n_x:r_col].reshape(n_types, n_shapes)
    if integer_placement:
        placement = np.rint(placement)
    bound = getattr(result, "mip_dual_bound", None)
    return nodes, placement, float(bound if bound is not None else result.fun)


def _place_whole_vms(problem: FleetProblem, nodes: np.ndarray, placement: np.ndarray) -> np.ndarray:
    """Whole VMs from a fractional placement: floor it, then put each left-over VM where there is room.

    At most one VM per (type, shape) is left over. Each goes to a type whose nodes still have room for it
    on every resource; only if none has room does it go to the type that fits it with the cheapest node
    (the caller then adds the node). Every shape ends up placed exactly `demand` times.
    """
    whole = np.floor(placement + 1e-6).astype(np.int64)
    fits = problem.fits()
    per_node = problem.per_node()
    for s in range(placement.shape[1]):
        surplus = int(whole[:, s].sum() - problem.demand[s])
        for j in np.argsort(-whole[:, s], kind="stable"):  # solver placed more than asked: take back
            take = min(max(surplus, 0), int(whole[j, s]))
            whole[j, s] -= take
            surplus -= take
        for _ in range(-surplus):
            spare = nodes[:, None] * problem.capacity - whole @ problem.needs  # (J, 4)
            room = (
                fits[:, s] & np.all(spare >= problem.needs[s] - 1e-9, axis=1) & (whole[:, s] < per_node[:, s] * nodes)
            )
            pool = np.flatnonzero(room) if room.any() else np.flatnonzero(fits[:, s])
            j = pool[np.argmin(problem.node_cost[pool])]
            whole[j, s] += 1
    return whole


def single_type_bound(problem: FleetProblem, j: int) -> float:
    """Closed-form cost of serving everything with type j alone (inf if a shape does not fit): a check."""
    if not problem.fits()[j].all():
        return math.inf
    nodes = int(problem.node_bounds()[j])
    racks = max(math.ceil(nodes * problem.u[j] / problem.rack_u - 1e-9),
                math.ceil(nodes * problem.peak_w[j] / problem.rack_w - 1e-9))  # fmt: skip
    return float(problem.node_cost[j] * nodes + problem.rack_cost * racks)
