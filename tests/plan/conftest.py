"""Fixtures for the plan tests: the shipped example and a one-of-everything plan whose numbers fit on paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.plan.costmodel import NodeSpec
from kvmkit.plan.inputs import Chassis, Cpu, DemandItem, Dimm, Drive, Licence, PlanInput, Policy, Site, VmShape
from kvmkit.plan.loader import load_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plan" / "example.toml"


def hand_plan(**site_overrides: object) -> PlanInput:
    """The plan test_costmodel.py computes by hand (numbers chosen to keep the arithmetic readable)."""
    site = {
        "electricity_price_per_kwh": 0.20, "pue": 1.5, "rack_monthly_cost": 1000.0, "rack_usable_u": 40,
        "rack_power_limit_kw": 10.0, "rack_network_cost": 12000.0, "node_network_cost": 600.0,
        "operations_cost_per_node_month": 50.0, "deployment_cost_per_node": 300.0, "support_pct_per_year": 12.0,
        "lifetimes_months": [36],
    }  # fmt: skip
    site.update(site_overrides)
    return PlanInput(
        site=Site(**site),
        policy=Policy(
            cpu_ratio=4.0, ram_ratio=1.0, host_reserved_cores=2, host_reserved_gb=32.0, storage_reserved_cores=2,
            storage_reserved_gb=0.0, storage_replicas=2.0, target_utilisation=0.5,
            reference_vm=VmShape(vcpu=4, ram_gb=16, disk_gb=100, iops=1000),
        ),
        chassis=[Chassis(name="box", u=1, price=3000, idle_w=100, max_w=200, sockets=2, cpu_socket="X",
                         max_cpu_tdp_w=300, dimm_slots=16, drive_bays=8, max_ram_gb=1024)],
        cpus=[Cpu(name="cpu32", socket="X", cores=32, threads_per_core=2, ghz=3.0, price=2000, tdp_w=250,
                  idle_w=50)],
        dimms=[Dimm(name="64G", gb=64, price=300, w=5)],
        drives=[Drive(name="4T", tb=4, iops=100_000, price=500, w=10)],
        licences=[
            Licence(name="per-core", per="core", price=1.0, billing="monthly", min_cores_per_socket=16),
            Licence(name="per-socket", per="socket", price=720.0, billing="perpetual"),
            Licence(name="per-node", per="node", price=10.0, billing="monthly"),
        ],
        demand=[DemandItem(name="ref", vcpu=4, ram_gb=16, disk_gb=100, iops=1000, count=100)],
    )  # fmt: skip


def hand_spec(plan: PlanInput, n_cpu: int = 2, n_dimm: int = 16, n_drive: int = 4) -> NodeSpec:
    return NodeSpec(chassis=plan.chassis[0], cpu=plan.cpus[0], n_cpu=n_cpu, dimm=plan.dimms[0], n_dimm=n_dimm,
                    drive=plan.drives[0], n_drive=n_drive)  # fmt: skip


@pytest.fixture(scope="session")
def example_plan() -> PlanInput:
    return load_plan(EXAMPLE)


@pytest.fixture()
def example_text() -> str:
    return EXAMPLE.read_text()
