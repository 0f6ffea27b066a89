"""How the best configuration and its cost per reference VM move when one input moves.

One-at-a-time sensitivity: each `--vary name=low:high` is swept over `steps` evenly spaced values with
every other input at its baseline; the whole configuration space is re-evaluated at every point (cheap:
the evaluation is vectorised), so the answer includes *which* configuration wins, not only its price.
The tornado chart is the cost per VM of the winner at the low and high ends, around the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ValidationError

from kvmkit.errors import InvalidInput
from kvmkit.plan.costmodel import NODE_RESOURCES
from kvmkit.plan.inputs import PlanInput
from kvmkit.plan.space import ConfigSpace, enumerate_space
from kvmkit.plan.vectorised import evaluate_space

# CLI name -> (section, field); "lifetime" is special: it changes the configuration space's months.
PARAMETERS: dict[str, tuple[str, str]] = {
    "power_price": ("site", "electricity_price_per_kwh"),
    "pue": ("site", "pue"),
    "rack_cost": ("site", "rack_monthly_cost"),
    "rack_kw": ("site", "rack_power_limit_kw"),
    "operations": ("site", "operations_cost_per_node_month"),
    "support_pct": ("site", "support_pct_per_year"),
    "cpu_ratio": ("policy", "cpu_ratio"),
    "ram_ratio": ("policy", "ram_ratio"),
    "utilisation": ("policy", "target_utilisation"),
    "replicas": ("policy", "storage_replicas"),
    "lifetime": ("site", "lifetimes_months"),
}


@dataclass(frozen=True)
class Vary:
    name: str
    low: float
    high: float


def parse_vary(text: str) -> Vary:
    """ "power_price=0.10:0.40" -> Vary; a one-line InvalidInput for anything else."""
    name, sep, span = text.partition("=")
    low, colon, high = span.partition(":")
    if not sep or not colon:
        raise InvalidInput(f"--vary {text!r}: expected NAME=LOW:HIGH, e.g. power_price=0.10:0.40")
    if name not in PARAMETERS:
        raise InvalidInput(f"--vary {text!r}: unknown parameter {name!r}; known: {', '.join(PARAMETERS)}")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise InvalidInput(f"--vary {text!r}: LOW and HIGH must be numbers") from None
    if lo > hi:
        raise InvalidInput(f"--vary {text!r}: LOW ({lo:g}) is above HIGH ({hi:g})")
    return Vary(name, lo, hi)


def with_value(plan: PlanInput, name: str, value: float) -> PlanInput:
    """The plan with one parameter replaced, re-validated so an impossible value is a clear error."""
    section, field = PARAMETERS[name]
    current = getattr(plan, section)
    new_value: object = [round(value)] if name == "lifetime" else value
    try:
        updated = type(current).model_validate({**current.model_dump(), field: new_value})
    except ValidationError as exc:
        raise InvalidInput(f"--vary {name}={value:g}: {exc.errors()[0]['msg']}") from None
    return plan.model_copy(update={section: updated})


def baseline_value(plan: PlanInput, name: str, months: int) -> float:
    if name == "lifetime":
        return float(months)
    section, field = PARAMETERS[name]
    return float(getattr(getattr(plan, section), field))


class SensitivityPoint(BaseModel):
    value: float | None  # None for the baseline
    best_id: str | None
    cost_per_vm_month: float | None
    vms_per_node: int
    binding_resource: str | None


class ParameterSweep(BaseModel):
    name: str
    baseline_value: float
    low: float
    high: float
    points: list[SensitivityPoint]
    cost_at_low: float | None  # tornado bar ends: the winner's cost per VM at each end
    cost_at_high: float | None
    best_changes: bool  # a different configuration wins somewhere in the range


class Sensitivity(BaseModel):
    months: int
    baseline: SensitivityPoint
    parameters: list[ParameterSweep]


def best_point(plan: PlanInput, space: ConfigSpace, value: float | None) -> SensitivityPoint:
    ev = evaluate_space(plan, space)
    top = ev.ranking(1)
    if not len(top):
        return SensitivityPoint(value=value, best_id=None, cost_per_vm_month=None, vms_per_node=0,
                                binding_resource=None)  # fmt: skip
    row = int(top[0])
    return SensitivityPoint(
        value=value, best_id=space.config_id(plan, row), cost_per_vm_month=round(float(ev.cost_per_vm[row]), 6),
        vms_per_node=int(ev.vms_per_node[row]), binding_resource=NODE_RESOURCES[int(ev.binding[row])],
    )  # fmt: skip


def sensitivity(plan: PlanInput, varies: list[Vary], months: int, steps: int = 5) -> Sensitivity:
    """Sweep each parameter over `steps` values (ends included) at one lifetime."""
    if steps < 2:
        raise InvalidInput(f"--steps must be at least 2, got {steps}")
    space = enumerate_space(plan, [months])
    sweeps = []
    for vary in varies:
        points = []
        for value in np.linspace(vary.low, vary.high, steps):
            varied = with_value(plan, vary.name, float(value))
            point_space = enumerate_space(varied, [round(value)]) if vary.name == "lifetime" else space
            points.append(best_point(varied, point_space, round(float(value), 6)))
        sweeps.append(ParameterSweep(
            name=vary.name, baseline_value=baseline_value(plan, vary.name, months), low=vary.low, high=vary.high,
            points=points, cost_at_low=points[0].cost_per_vm_month, cost_at_high=points[-1].cost_per_vm_month,
            best_changes=len({p.best_id for p in points}) > 1,
        ))  # fmt: skip
    # Widest swing first: the order of a tornado chart.
    sweeps.sort(key=lambda s: -abs((s.cost_at_high or 0.0) - (s.cost_at_low or 0.0)))
    return Sensitivity(months=months, baseline=best_point(plan, space, None), parameters=sweeps)
