"""The NumPy evaluation equals the reference loop, and the properties the issue asks for hold (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmkit.plan.costmodel import BREAKDOWN_KEYS, NODE_RESOURCES, evaluate_node
from kvmkit.plan.inputs import Chassis, Cpu, Dimm, Drive, Licence, PlanInput, Policy, Site, VmShape
from kvmkit.plan.space import enumerate_space
from kvmkit.plan.vectorised import evaluate_space

money = st.floats(min_value=0, max_value=20_000, allow_nan=False)
watts = st.floats(min_value=0, max_value=800, allow_nan=False)


@st.composite
def plans(draw) -> PlanInput:
    idle = draw(watts)
    chassis = [Chassis(name=f"c{i}", u=draw(st.integers(1, 4)), price=draw(money), idle_w=idle,
                       max_w=idle + draw(watts), sockets=draw(st.integers(1, 2)), cpu_socket="S",
                       max_cpu_tdp_w=400, dimm_slots=draw(st.integers(1, 6)), drive_bays=draw(st.integers(0, 3)),
                       max_ram_gb=draw(st.sampled_from([64.0, 256.0, 1024.0])))
               for i in range(draw(st.integers(1, 2)))]  # fmt: skip
    cpus = []
    for i in range(draw(st.integers(1, 3))):
        tdp = draw(st.floats(min_value=50, max_value=400))
        cpus.append(Cpu(name=f"p{i}", socket="S", cores=draw(st.integers(1, 128)), threads_per_core=draw(
            st.integers(1, 2)), ghz=draw(st.floats(1, 4)), price=draw(money), tdp_w=tdp,
            idle_w=draw(st.floats(0, 1)) * tdp))  # fmt: skip
    dimms = [Dimm(name=f"m{i}", gb=draw(st.sampled_from([8.0, 32.0, 96.0])), price=draw(money),
                  w=draw(st.floats(0, 10))) for i in range(draw(st.integers(1, 2)))]  # fmt: skip
    drives = [Drive(name=f"d{i}", tb=draw(st.floats(0.1, 30)), iops=draw(st.floats(0, 1e6)), price=draw(money),
                    w=draw(st.floats(0, 25))) for i in range(draw(st.integers(1, 2)))]  # fmt: skip
    licences = [Licence(name=f"l{i}", per=draw(st.sampled_from(["node", "socket", "core"])), price=draw(money),
                        billing=draw(st.sampled_from(["monthly", "perpetual"])),
                        min_cores_per_socket=draw(st.integers(0, 32)), min_cores_per_server=draw(st.integers(0, 64)))
                for i in range(draw(st.integers(0, 2)))]  # fmt: skip
    site = Site(
        electricity_price_per_kwh=draw(st.floats(0, 1)),
        pue=draw(st.floats(1, 3)),
        rack_monthly_cost=draw(money),
        rack_usable_u=draw(st.integers(1, 48)),
        rack_power_limit_kw=draw(st.floats(0.2, 40)),
        rack_network_cost=draw(money),
        node_network_cost=draw(money),
        operations_cost_per_node_month=draw(money),
        deployment_cost_per_node=draw(money),
        support_pct_per_year=draw(st.floats(0, 30)),
        lifetimes_months=draw(st.lists(st.integers(1, 120), min_size=1, max_size=2, unique=True)),
    )
    policy = Policy(
        cpu_ratio=draw(st.floats(0.5, 16)),
        ram_ratio=draw(st.floats(0.5, 2)),
        host_reserved_cores=draw(st.integers(0, 8)),
        host_reserved_gb=draw(st.floats(0, 64)),
        storage_reserved_cores=draw(st.integers(0, 4)),
        storage_replicas=draw(st.floats(1, 3)),
        target_utilisation=draw(st.floats(0, 1)),
        reference_ghz=draw(st.none() | st.floats(1, 4)),
        reference_vm=VmShape(
            vcpu=draw(st.floats(0.5, 16)),
            ram_gb=draw(st.floats(0.5, 64)),
            disk_gb=draw(st.floats(0, 500)),
            iops=draw(st.floats(0, 5000)),
        ),
    )
    return PlanInput(site=site, policy=policy, chassis=chassis, cpus=cpus, dimms=dimms, drives=drives,
                     licences=licences)  # fmt: skip


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same(a: float, b: float) -> bool:
    return (math.isinf(a) and math.isinf(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@FAST
@given(plans())
def test_vectorised_equals_the_reference_loop_for_every_configuration(plan):
    space = enumerate_space(plan)
    ev = evaluate_space(plan, space)
    for i in range(min(len(space), 200)):
        node = evaluate_node(plan.site, plan.policy, plan.licences, space.spec(plan, i), int(space.months[i]))
        for key in BREAKDOWN_KEYS:
            assert _same(node.breakdown[key], float(ev.breakdown[key][i])), key
        assert _same(node.monthly_cost, float(ev.monthly_cost[i]))
        assert node.nodes_per_rack == ev.nodes_per_rack[i]
        assert node.vms_per_node == ev.vms_per_node[i]
        assert node.binding_resource == NODE_RESOURCES[ev.binding[i]]
        assert (node.rack_binding == "rack_power") == bool(ev.rack_power_binds[i])


@FAST
@given(plans())
def test_cost_per_resource_is_never_negative(plan):
    ev = evaluate_space(plan, enumerate_space(plan))
    for amount in (ev.vcpu, ev.ram_gb, ev.storage_tb, ev.iops, ev.vms_per_node.astype(float)):
        per = ev.cost_per(amount)
        assert np.all(per >= 0) and not np.any(np.isnan(per))
    assert np.all(ev.monthly_cost >= 0)


@FAST
@given(plans(), st.floats(0, 1), st.floats(0.001, 1))
def test_more_expensive_power_never_makes_a_configuration_cheaper(plan, price, increase):
    cheap = plan.model_copy(update={"site": plan.site.model_copy(update={"electricity_price_per_kwh": price})})
    dear = plan.model_copy(update={"site": plan.site.model_copy(
        update={"electricity_price_per_kwh": price + increase})})  # fmt: skip
    space = enumerate_space(plan)
    a, b = evaluate_space(cheap, space), evaluate_space(dear, space)
    assert np.all(b.monthly_cost >= a.monthly_cost)
    ra, rb = a.ranking(1), b.ranking(1)
    if len(ra):
        assert b.cost_per_vm[rb[0]] >= a.cost_per_vm[ra[0]]


@FAST
@given(plans(), st.floats(0.2, 40), st.floats(0.01, 0.99))
def test_tighter_rack_power_never_increases_nodes_per_rack(plan, kw, tighter):
    space = enumerate_space(plan)

    def per_rack(limit: float) -> np.ndarray:
        site = plan.site.model_copy(update={"rack_power_limit_kw": limit})
        return evaluate_space(plan.model_copy(update={"site": site}), space).nodes_per_rack

    assert np.all(per_rack(kw * tighter) <= per_rack(kw))


def test_ranking_is_by_cost_per_vm_and_skips_infeasible(example_plan):
    ev = evaluate_space(example_plan, enumerate_space(example_plan))
    ranked = ev.ranking()
    assert len(ranked) == np.count_nonzero(ev.feasible) < len(ev)
    per_vm = ev.cost_per_vm[ranked]
    assert np.all(np.diff(per_vm) >= 0)
    assert np.array_equal(ev.ranking(10), ranked[:10])
