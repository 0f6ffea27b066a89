"""The formulas of docs/plan.md on one node worked out by hand; the arithmetic is in the comments."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from kvmkit.plan.costmodel import evaluate_node, licence_units, nodes_per_rack, vms_that_fit
from kvmkit.plan.inputs import Licence, VmShape
from tests.plan.conftest import hand_plan, hand_spec


def _node(**site):
    plan = hand_plan(**site)
    return evaluate_node(plan.site, plan.policy, plan.licences, hand_spec(plan), 36)


def test_breakdown_matches_the_hand_computation():
    node = _node()
    b = node.breakdown
    # hardware = chassis 3000 + 2 CPUs × 2000 + 16 DIMMs × 300 + 4 drives × 500 = 13,800 ; over 36 months
    assert b["hardware"] == pytest.approx(13_800 / 36)  # 383.33
    assert b["deployment"] == pytest.approx(300 / 36)  # 8.33
    assert b["node_network"] == pytest.approx(600 / 36)  # 16.67
    # support = 13,800 × 12 % per year / 12 months = 138.00
    assert b["support"] == pytest.approx(138.0)
    # licences: per core 2 sockets × max(32, 16) cores × 1.00 = 64 ; per socket perpetual 2 × 720 / 36 = 40 ;
    # per node 10 → 114
    assert b["licences"] == pytest.approx(114.0)
    # watts: DIMMs 16 × 5 = 80 ; idle = 100 + 2 × 50 + 80 = 280 ; max = 200 + 2 × 250 + 80 = 780 ; drives 4 × 10
    # average = 280 + 0.5 × (780 − 280) + 40 = 570 W ; power = 570 × 1.5 × 730 / 1000 × 0.20 = 124.83
    assert node.average_w == pytest.approx(570.0)
    assert node.peak_w == pytest.approx(820.0)
    assert b["power"] == pytest.approx(124.83)
    # nodes per rack = min(40 U / 1 U = 40, ⌊10,000 W / 820 W⌋ = 12) = 12, rack power binds
    assert (node.nodes_per_rack, node.rack_binding) == (12, "rack_power")
    assert b["rack"] == pytest.approx(1000 / 12)  # 83.33
    assert b["rack_network"] == pytest.approx(12_000 / 12 / 36)  # 27.78
    assert b["operations"] == 50.0
    # total = 14,700 / 36 + 138 + 114 + 124.83 + 1000 / 12 + 1000 / 36 + 50 = 946.2744…
    assert node.monthly_cost == pytest.approx(946.274444, abs=1e-6)


def test_delivered_resources_and_binding_match_the_hand_computation():
    node = _node()
    # vCPU = (2 × 32 − 2 host − 2 storage) × 2 threads × ratio 4 = 480
    assert node.vcpu == 480
    # RAM = (min(16 × 64 = 1024, max 1024) − 32 host − 0 storage) × 1 = 992 GB
    assert node.ram_gb == 992
    # storage = 4 × 4 TB / 2 replicas = 8 TB ; IOPS = 4 × 100,000 / 2 = 200,000
    assert (node.storage_tb, node.iops) == (8.0, 200_000.0)
    # VMs: CPU 480 / 4 = 120, RAM 992 / 16 = 62, disk 8000 / 100 = 80, IOPS 200 → 62, RAM binds
    assert (node.vms_per_node, node.binding_resource) == (62, "ram")
    assert node.cost_per(node.vms_per_node) == pytest.approx(946.274444 / 62)  # 15.26 per VM-month
    assert node.cost_per(node.storage_tb) == pytest.approx(946.274444 / 8)


def test_max_ram_caps_installed_ram():
    plan = hand_plan()
    small = plan.chassis[0].model_copy(update={"max_ram_gb": 512.0})
    spec = replace(hand_spec(plan), chassis=small)
    node = evaluate_node(plan.site, plan.policy, plan.licences, spec, 36)
    assert node.ram_gb == 512 - 32  # min(1024 installed, 512 max) − 32 reserved


def test_rack_space_binds_when_power_allows_more():
    plan = hand_plan(rack_power_limit_kw=100.0, rack_usable_u=40)
    # ⌊100,000 / 820⌋ = 121 by power, 40 by space
    assert nodes_per_rack(plan.site, 1, 820.0) == (40, "rack_space")
    assert nodes_per_rack(plan.site, 2, 820.0) == (20, "rack_space")


def test_node_above_the_rack_power_limit_fits_no_rack():
    plan = hand_plan(rack_power_limit_kw=0.5)
    node = evaluate_node(plan.site, plan.policy, plan.licences, hand_spec(plan), 36)
    assert node.nodes_per_rack == 0 and not node.feasible
    assert math.isinf(node.monthly_cost)


@pytest.mark.parametrize(
    ("licence", "units"),
    [
        (Licence(name="a", per="core", price=1, min_cores_per_socket=40), 80),  # 2 × max(32, 40)
        (Licence(name="b", per="core", price=1, min_cores_per_server=100), 100),  # max(2 × 32, 100)
        (Licence(name="c", per="core", price=1), 64),
        (Licence(name="d", per="socket", price=1), 2),
        (Licence(name="e", per="node", price=1), 1),
    ],
)
def test_licence_units_apply_per_socket_and_per_server_minimums(licence, units):
    assert licence_units(licence, hand_spec(hand_plan())) == units


def test_reservations_larger_than_the_node_deliver_nothing_not_negative():
    plan = hand_plan()
    policy = plan.policy.model_copy(update={"host_reserved_cores": 200, "host_reserved_gb": 5000})
    node = evaluate_node(plan.site, policy, plan.licences, hand_spec(plan), 36)
    assert (node.vcpu, node.ram_gb, node.vms_per_node) == (0.0, 0.0, 0)
    assert math.isinf(node.cost_per(node.vcpu))


def test_vms_that_fit_ignores_resources_the_vm_does_not_use():
    vm = VmShape(vcpu=2, ram_gb=4)  # no disk, no IOPS
    assert vms_that_fit(vm, vcpu=10, ram_gb=100, storage_tb=0, iops=0) == (5, "cpu")
