"""`kvmkit plan bench`: the vectorised evaluation against the per-config Python loop, in one process.

The anchor is costmodel.evaluate_node called once per configuration — the straightforward loop a person
would write — timed on a slice of the same configuration space in the same process, so the ratio does
not depend on the machine. Both paths' results are compared on that slice (max_abs_difference) to show
they did the same work. Peak RSS is the process' high-water mark (getrusage), so it covers everything.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from pydantic import BaseModel

from kvmkit.plan.costmodel import evaluate_node
from kvmkit.plan.fleet import plan_fleet
from kvmkit.plan.inputs import (
    Chassis,
    Cpu,
    DemandItem,
    Dimm,
    Drive,
    Licence,
    PlanInput,
    Policy,
    Site,
    VmShape,
)  # fmt: skip
from kvmkit.plan.space import ConfigSpace, enumerate_space
from kvmkit.plan.vectorised import evaluate_space
from kvmkit.rss import peak_rss_mib


def synthetic_plan() -> PlanInput:
    """A catalog shaped like examples/plan/example.toml but wider: about 1.4 million configurations."""
    chassis = [
        Chassis(name="1U-1S", u=1, price=3200, idle_w=70, max_w=120, sockets=1, cpu_socket="SP5",
                max_cpu_tdp_w=400, dimm_slots=12, drive_bays=10, max_ram_gb=3072),
        Chassis(name="1U-2S", u=1, price=4800, idle_w=95, max_w=160, sockets=2, cpu_socket="SP5",
                max_cpu_tdp_w=360, dimm_slots=24, drive_bays=10, max_ram_gb=6144),
        Chassis(name="2U-2S", u=2, price=5600, idle_w=110, max_w=190, sockets=2, cpu_socket="SP5",
                max_cpu_tdp_w=400, dimm_slots=24, drive_bays=24, max_ram_gb=6144),
        Chassis(name="2U-2S-Xeon", u=2, price=5200, idle_w=100, max_w=180, sockets=2, cpu_socket="LGA4677",
                max_cpu_tdp_w=350, dimm_slots=32, drive_bays=12, max_ram_gb=8192),
    ]  # fmt: skip
    cpus = [
        Cpu(name=f"{socket}-{cores}c-{tier}", socket=socket, cores=cores, ghz=ghz, price=price, tdp_w=tdp,
            idle_w=tdp / 6)
        for socket, scale in (("SP5", 1.0), ("LGA4677", 1.15))
        for cores in (16, 24, 32, 48, 64, 96)
        for tier, ghz, price, tdp in (
            ("std", 2.4, 110 * cores * scale, min(120 + 2.5 * cores, 360)),
            ("fast", 3.1, 160 * cores * scale, min(160 + 2.5 * cores, 360)),
        )
    ]  # fmt: skip
    dimms = [
        Dimm(name=f"{gb}G", gb=gb, price=gb * per_gb, w=3 + gb / 32)
        for gb, per_gb in ((16, 4.0), (32, 3.75), (64, 3.6), (96, 3.95), (128, 4.4), (256, 7.4))
    ]
    drives = [
        Drive(name=f"{tb}T-{kind}", tb=tb, iops=iops, price=price, w=w)
        for tb, kind, iops, price, w in (
            (1.92, "NVMe", 150e3, 220, 12),
            (3.84, "NVMe", 200e3, 380, 12),
            (7.68, "NVMe", 220e3, 720, 14),
            (15.36, "NVMe", 250e3, 1500, 20),
            (3.84, "SATA", 60e3, 330, 5),
            (7.68, "SATA", 65e3, 640, 6),
        )
    ]
    shapes = (
        (2, 4, 40, 200, 4000),
        (4, 16, 100, 500, 3000),
        (8, 64, 200, 1000, 1500),
        (16, 32, 100, 1000, 1000),
        (8, 64, 1000, 5000, 500),
    )  # 10,000 VMs of 5 shapes
    return PlanInput(
        site=Site(electricity_price_per_kwh=0.22, pue=1.4, rack_monthly_cost=900, rack_usable_u=40,
                  rack_power_limit_kw=12, rack_network_cost=18000, node_network_cost=450,
                  operations_cost_per_node_month=40, deployment_cost_per_node=250, support_pct_per_year=6,
                  lifetimes_months=[36, 60]),
        policy=Policy(cpu_ratio=4, storage_reserved_cores=4, storage_reserved_gb=32, storage_replicas=3,
                      target_utilisation=0.45, reference_vm=VmShape(vcpu=4, ram_gb=16, disk_gb=100, iops=500)),
        chassis=chassis, cpus=cpus, dimms=dimms, drives=drives,
        licences=[Licence(name="hv", per="core", price=2.5, min_cores_per_socket=16),
                  Licence(name="os", per="socket", price=600, billing="perpetual")],
        demand=[DemandItem(name=f"shape{i}", vcpu=v, ram_gb=r, disk_gb=d, iops=io, count=n)
                for i, (v, r, d, io, n) in enumerate(shapes)],
    )  # fmt: skip


class BenchResult(BaseModel):
    configurations: int
    enumerate_seconds: float
    evaluate_seconds: float  # median of `repeats` runs, like loop_seconds
    rank_seconds: float
    vectorised_configs_per_s: float
    loop_configurations: int
    loop_seconds: float
    loop_configs_per_s: float
    ratio: float  # vectorised / loop configurations per second
    max_abs_difference: float  # monthly cost, vectorised vs loop, over the loop's slice
    fleet_vms: int
    fleet_shapes: int
    fleet_candidates: int
    fleet_milp_seconds: float
    fleet_total_seconds: float
    fleet_within_gap: bool
    peak_rss_mb: float


def _loop(plan: PlanInput, space: ConfigSpace, count: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    monthly = np.empty(count)
    for i in range(count):
        node = evaluate_node(plan.site, plan.policy, plan.licences, space.spec(plan, i), int(space.months[i]))
        monthly[i] = node.monthly_cost
    return time.perf_counter() - started, monthly


def run_bench(configurations: int = 1_000_000, loop_configurations: int = 20_000, repeats: int = 3,
              plan: PlanInput | None = None) -> BenchResult:  # fmt: skip
    plan = plan or synthetic_plan()
    started = time.perf_counter()
    space = enumerate_space(plan)
    if len(space) > configurations:  # a spread-out sample, not the first chassis only
        space = space.take(np.linspace(0, len(space) - 1, configurations).astype(np.int64))
    enumerate_s = time.perf_counter() - started
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        ev = evaluate_space(plan, space)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    ev.ranking(10)
    rank_s = time.perf_counter() - started
    loop_count = min(loop_configurations, len(space))
    loops = [_loop(plan, space, loop_count) for _ in range(repeats)]
    loop_s, loop_monthly = statistics.median(t for t, _ in loops), loops[0][1]
    evaluate_s = statistics.median(timings)
    started = time.perf_counter()
    fleet_ev = evaluate_space(plan, enumerate_space(plan, [60]))
    fleet = plan_fleet(plan, fleet_ev, 60)
    fleet_total_s = time.perf_counter() - started
    return BenchResult(
        configurations=len(space), enumerate_seconds=round(enumerate_s, 4), evaluate_seconds=round(evaluate_s, 4),
        rank_seconds=round(rank_s, 4), vectorised_configs_per_s=round(len(space) / evaluate_s),
        loop_configurations=loop_count, loop_seconds=round(loop_s, 4),
        loop_configs_per_s=round(loop_count / loop_s),
        ratio=round((len(space) / evaluate_s) / (loop_count / loop_s), 1),
        max_abs_difference=float(np.max(np.abs(loop_monthly - ev.monthly_cost[:loop_count]))),
        fleet_vms=sum(d.count for d in plan.demand), fleet_shapes=len(plan.demand),
        fleet_candidates=fleet.candidates, fleet_milp_seconds=fleet.solve_seconds,
        fleet_total_seconds=round(fleet_total_s, 4), fleet_within_gap=fleet.within_gap,
        peak_rss_mb=peak_rss_mib(),
    )  # fmt: skip
