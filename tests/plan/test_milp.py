"""The fleet MILP against brute force on small demands, and its plans checked for feasibility."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kvmkit.plan.milp import FleetProblem, FleetSolution, single_type_bound, solve


def random_problem(seed: int) -> FleetProblem:
    """2–3 node types, 1–2 shapes, at most 6 VMs each: small enough to enumerate every plan."""
    rng = np.random.default_rng(seed)
    types = int(rng.integers(2, 4))
    shapes = int(rng.integers(1, 3))
    capacity = rng.integers(2, 9, size=(types, 4)).astype(float)
    needs = rng.integers(1, 4, size=(shapes, 4)).astype(float)
    return FleetProblem(
        node_cost=rng.integers(50, 200, size=types).astype(float), u=rng.integers(1, 3, size=types).astype(float),
        peak_w=rng.integers(200, 900, size=types).astype(float), capacity=capacity, needs=needs,
        demand=rng.integers(1, 7, size=shapes).astype(float), rack_u=int(rng.integers(2, 6)),
        rack_w=float(rng.integers(1000, 3000)), rack_cost=float(rng.integers(10, 400)),
    )  # fmt: skip


def _placements(problem: FleetProblem):
    """Every way to split each shape's VMs over the types it fits."""
    fits = problem.fits()
    per_shape = []
    for s, count in enumerate(problem.demand.astype(int)):
        allowed = [j for j in range(len(problem.node_cost)) if fits[j, s]]
        splits = []
        for cut in itertools.combinations_with_replacement(allowed, count):
            column = np.zeros(len(problem.node_cost), dtype=int)
            for j in cut:
                column[j] += 1
            splits.append(column)
        per_shape.append(splits)
    for combo in itertools.product(*per_shape):
        yield np.column_stack(combo)


def brute_force(problem: FleetProblem, single_type: bool = False) -> float:
    """Cheapest plan by trying every placement; nodes and racks then follow in closed form."""
    best = math.inf
    for placement in _placements(problem):
        if single_type and np.count_nonzero(placement.sum(axis=1)) > 1:
            continue
        load = placement @ problem.needs
        pooled = np.max(np.where(load > 0, load / problem.capacity, 0), axis=1)
        # no VM straddles two nodes: at most ⌊min_k capacity_jk / need_sk⌋ VMs of shape s per node of type j
        per_node = np.floor(np.min(problem.capacity[:, None, :] / problem.needs[None, :, :], axis=2))
        by_count = np.max(np.where(placement > 0, placement / np.maximum(per_node, 1), 0), axis=1)
        nodes = np.ceil(np.maximum(pooled, by_count) - 1e-9)
        racks = max(math.ceil(problem.u @ nodes / problem.rack_u - 1e-9),
                    math.ceil(problem.peak_w @ nodes / problem.rack_w - 1e-9))  # fmt: skip
        best = min(best, float(problem.node_cost @ nodes + problem.rack_cost * racks))
    return best


def assert_valid(problem: FleetProblem, solution: FleetSolution) -> None:
    assert np.array_equal(solution.placement.sum(axis=0), problem.demand.astype(int))
    assert np.all(solution.placement[~problem.fits()] == 0)
    assert np.all(solution.placement @ problem.needs <= solution.nodes[:, None] * problem.capacity + 1e-9)
    assert np.all(solution.placement <= problem.per_node() * solution.nodes[:, None])
    assert problem.u @ solution.nodes <= solution.racks * problem.rack_u
    assert problem.peak_w @ solution.nodes <= solution.racks * problem.rack_w + 1e-9
    cost = problem.node_cost @ solution.nodes + problem.rack_cost * solution.racks
    assert solution.total_monthly_cost == pytest.approx(cost)


@pytest.mark.parametrize("seed", range(12))
def test_exact_milp_equals_brute_force(seed):
    problem = random_problem(seed)
    while not problem.fits().any(axis=0).all():  # a shape fits no type in this draw: draw again
        seed += 1000
        problem = random_problem(seed)
    solution = solve(problem, gap=0.0, exact_placement=True)
    assert_valid(problem, solution)
    assert solution.total_monthly_cost == pytest.approx(brute_force(problem))


@pytest.mark.parametrize("seed", range(12))
def test_default_two_phase_plan_is_valid_and_bounded_by_the_optimum(seed):
    problem = random_problem(seed)
    while not problem.fits().any(axis=0).all():  # a draw where some shape fits no type says nothing: draw again
        seed += 1000
        problem = random_problem(seed)
    optimum = brute_force(problem)
    solution = solve(problem, gap=0.0)
    assert_valid(problem, solution)
    assert solution.lower_bound <= optimum + 1e-6 <= solution.total_monthly_cost + 2e-6


@pytest.mark.parametrize("seed", range(8))
def test_single_type_equals_brute_force_and_the_closed_form(seed):
    problem = random_problem(seed)
    while not problem.fits().all(axis=1).any():  # no single type fits every shape in this draw: draw again
        seed += 1000
        problem = random_problem(seed)
    solution = solve(problem, single_type=True, gap=0.0, exact_placement=True)
    assert_valid(problem, solution)
    assert np.count_nonzero(solution.nodes) == 1
    closed_form = min(single_type_bound(problem, j) for j in range(len(problem.node_cost)))
    assert solution.total_monthly_cost == pytest.approx(brute_force(problem, single_type=True))
    assert solution.total_monthly_cost == pytest.approx(closed_form)


def test_rack_power_makes_a_mix_cheaper_than_the_cheapest_type_alone():
    # Type 0: 10 VMs, 1,000 W, 100/month. Type 1: 4 VMs, 250 W, 60/month. Racks: 10 U, 3,500 W, 1,000/month.
    # 38 VMs: 4 × type 0 = 4,000 W → 2 racks → 400 + 2,000 = 2,400
    #         3 × type 0 + 2 × type 1 = 38 VMs, 3,500 W, 5 U → 1 rack → 300 + 120 + 1,000 = 1,420 (best)
    #         2 × type 0 + 5 × type 1 → 200 + 300 + 1,000 = 1,500 ; 10 × type 1 → 600 + 1,000 = 1,600
    problem = FleetProblem(
        node_cost=np.array([100.0, 60.0]), u=np.array([1.0, 1.0]), peak_w=np.array([1000.0, 250.0]),
        capacity=np.array([[10.0, 10, 10, 10], [4.0, 4, 4, 4]]), needs=np.array([[1.0, 1, 1, 1]]),
        demand=np.array([38.0]), rack_u=10, rack_w=3500.0, rack_cost=1000.0,
    )  # fmt: skip
    solution = solve(problem, gap=0.0, exact_placement=True)
    assert (solution.nodes.tolist(), solution.racks) == ([3, 2], 1)
    assert solution.total_monthly_cost == pytest.approx(1420.0)
    assert brute_force(problem) == pytest.approx(1420.0)


def test_a_vm_never_straddles_two_nodes():
    # Nodes of 64 vCPU; VMs of 48 vCPU: pooled capacity would put 4 VMs on 3 nodes (192 ≥ 4 × 48),
    # but each node holds one such VM → 4 nodes.
    problem = FleetProblem(
        node_cost=np.array([100.0]), u=np.array([1.0]), peak_w=np.array([100.0]),
        capacity=np.array([[64.0, 512, 1000, 1000]]), needs=np.array([[48.0, 64, 10, 10]]),
        demand=np.array([4.0]), rack_u=40, rack_w=10_000.0, rack_cost=0.0,
    )  # fmt: skip
    for exact in (True, False):
        assert solve(problem, gap=0.0, exact_placement=exact).nodes.tolist() == [4]
