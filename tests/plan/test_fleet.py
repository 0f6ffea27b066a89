"""The fleet for the example's 10,000 VMs: demand met, candidates, single type exact, errors located."""

from __future__ import annotations

import numpy as np
import pytest

from kvmkit.plan.fleet import candidate_rows, plan_fleet, problem_for
from kvmkit.plan.problems import PlanProblem
from kvmkit.plan.space import enumerate_space
from kvmkit.plan.vectorised import evaluate_space


@pytest.fixture(scope="module")
def ev60(example_plan):
    return evaluate_space(example_plan, enumerate_space(example_plan, [60]))


def test_example_fleet_of_10000_vms_meets_demand(example_plan, ev60):
    fleet = plan_fleet(example_plan, ev60, 60)
    placed = {d.name: 0 for d in example_plan.demand}
    for node in fleet.nodes:
        for name, count in node.vms.items():
            placed[name] += count
    assert placed == {d.name: d.count for d in example_plan.demand}
    assert sum(placed.values()) == 10_000
    assert fleet.lower_bound <= fleet.total_monthly_cost <= fleet.lower_bound * (1 + fleet.gap) + 1e-6
    assert all(0 < u <= 1 for u in fleet.utilisation.values())
    assert fleet.total_nodes == sum(n.count for n in fleet.nodes)


def test_a_demand_no_configuration_can_meet_names_the_shape(example_plan):
    huge = example_plan.demand[0].model_copy(update={"name": "whale", "vcpu": 100_000})
    plan = example_plan.model_copy(update={"demand": [*example_plan.demand[1:], huge]})
    ev = evaluate_space(plan, enumerate_space(plan, [60]))
    with pytest.raises(PlanProblem) as caught:
        plan_fleet(plan, ev, 60)
    assert caught.value.loc == ("demand", 4)
    assert "whale" in str(caught.value) and "100000 vCPU" in str(caught.value)


def test_single_type_is_the_cheapest_over_every_configuration(example_plan, ev60):
    fleet = plan_fleet(example_plan, ev60, 60, single_type=True)
    assert len(fleet.nodes) == 1 and fleet.lower_bound == pytest.approx(fleet.total_monthly_cost)
    # Closed form over *all* 192,600 configurations, not only the candidates: every shape on one type,
    # pooled resources, and per shape no more VMs than fit node by node.
    rows = np.flatnonzero(ev60.nodes_per_rack >= 1)
    problem = problem_for(example_plan, ev60, rows, 60)
    hosts_all = problem.fits().all(axis=1)
    capacity = problem.capacity[hosts_all]
    pooled = np.max((problem.demand @ problem.needs) / capacity, axis=1)
    per_node = np.floor(np.min(capacity[:, None, :] / problem.needs[None, :, :], axis=2))
    nodes = np.ceil(np.maximum(pooled, np.max(problem.demand / per_node, axis=1)) - 1e-9)
    racks = np.maximum(np.ceil(nodes * problem.u[hosts_all] / problem.rack_u - 1e-9),
                       np.ceil(nodes * problem.peak_w[hosts_all] / problem.rack_w - 1e-9))  # fmt: skip
    cheapest = np.min(problem.node_cost[hosts_all] * nodes + problem.rack_cost * racks)
    assert fleet.total_monthly_cost == pytest.approx(cheapest)


def test_candidates_include_each_shapes_cheapest(example_plan, ev60):
    rows = candidate_rows(example_plan, ev60, 60, per_shape=3)
    assert 3 <= len(rows) <= 3 * (len(example_plan.demand) + 2)
    assert set(ev60.space.months[rows].tolist()) == {60}
    assert ev60.ranking(1)[0] in rows  # the reference VM's winner is always a candidate
