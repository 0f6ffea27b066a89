"""Typed records of plan results: the same objects the CLI prints with --json and the report draws."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel

from kvmkit.plan.costmodel import BREAKDOWN_KEYS, NODE_RESOURCES
from kvmkit.plan.inputs import PlanInput
from kvmkit.plan.vectorised import Evaluation


def finite(value: float) -> float | None:
    """JSON has no infinity: "nothing delivered, so no price per unit" is null."""
    return None if not math.isfinite(value) else round(float(value), 6)


class Configuration(BaseModel):
    id: str
    rank: int
    components: dict[str, str | int]
    months: int
    monthly_cost_per_node: float
    breakdown: dict[str, float]
    average_w: float
    peak_w: float
    nodes_per_rack: int
    rack_binding: str
    vcpu: float
    ram_gb: float
    storage_tb: float
    iops: float
    vms_per_node: int
    binding_resource: str
    cost_per_vm_month: float | None
    cost_per_vcpu_month: float | None
    cost_per_gb_ram_month: float | None
    cost_per_tb_month: float | None
    cost_per_kiops_month: float | None


class EvaluationSummary(BaseModel):
    evaluated: int
    feasible: int
    months: list[int]
    reference_vm: dict[str, float | str]
    configurations: list[Configuration]


def configuration(plan: PlanInput, ev: Evaluation, row: int, rank: int) -> Configuration:
    spec = ev.space.spec(plan, row)
    monthly = float(ev.monthly_cost[row])

    def per(amount: float) -> float | None:
        return finite(monthly / amount) if amount > 0 else None

    vms = int(ev.vms_per_node[row])
    return Configuration(
        id=ev.space.config_id(plan, row), rank=rank, components=spec.components(),
        months=int(ev.space.months[row]), monthly_cost_per_node=round(monthly, 6),
        breakdown={k: round(float(ev.breakdown[k][row]), 6) for k in BREAKDOWN_KEYS},
        average_w=round(float(ev.average_w[row]), 3), peak_w=round(float(ev.peak_w[row]), 3),
        nodes_per_rack=int(ev.nodes_per_rack[row]),
        rack_binding="rack_power" if ev.rack_power_binds[row] else "rack_space",
        vcpu=round(float(ev.vcpu[row]), 6), ram_gb=round(float(ev.ram_gb[row]), 6),
        storage_tb=round(float(ev.storage_tb[row]), 6), iops=round(float(ev.iops[row]), 3),
        vms_per_node=vms, binding_resource=NODE_RESOURCES[int(ev.binding[row])],
        cost_per_vm_month=per(vms), cost_per_vcpu_month=per(float(ev.vcpu[row])),
        cost_per_gb_ram_month=per(float(ev.ram_gb[row])), cost_per_tb_month=per(float(ev.storage_tb[row])),
        cost_per_kiops_month=per(float(ev.iops[row]) / 1000.0),
    )  # fmt: skip


def summarise(plan: PlanInput, ev: Evaluation, top: int | None) -> EvaluationSummary:
    rows = ev.ranking(top)
    return EvaluationSummary(
        evaluated=len(ev), feasible=int(np.count_nonzero(ev.feasible)),
        months=sorted({int(m) for m in np.unique(ev.space.months)}),
        reference_vm=plan.policy.reference_vm.model_dump(),
        configurations=[configuration(plan, ev, int(row), rank) for rank, row in enumerate(rows, start=1)],
    )  # fmt: skip
