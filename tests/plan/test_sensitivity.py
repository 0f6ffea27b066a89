"""One-at-a-time sweeps: parsing, monotone effects, and that the winner can change."""

from __future__ import annotations

import pytest

from kvmkit.errors import InvalidInput
from kvmkit.plan.sensitivity import Vary, parse_vary, sensitivity


@pytest.mark.parametrize(
    ("text", "problem"),
    [("power_price", "expected NAME=LOW:HIGH"), ("watts=1:2", "unknown parameter 'watts'"),
     ("cpu_ratio=a:b", "must be numbers"), ("cpu_ratio=8:1", "above HIGH")],
)  # fmt: skip
def test_bad_vary_is_one_clear_line(text, problem):
    with pytest.raises(InvalidInput, match=problem):
        parse_vary(text)


def test_vary_parses():
    assert parse_vary("power_price=0.10:0.40") == Vary("power_price", 0.10, 0.40)


def test_power_price_raises_the_best_cost_and_cpu_ratio_changes_the_winner(example_plan):
    result = sensitivity(example_plan, [Vary("power_price", 0.10, 0.40), Vary("cpu_ratio", 1, 8)], 60, steps=4)
    sweeps = {s.name: s for s in result.parameters}
    power = [p.cost_per_vm_month for p in sweeps["power_price"].points]
    assert power == sorted(power) and power[0] < power[-1]
    ratio = sweeps["cpu_ratio"]
    costs = [p.cost_per_vm_month for p in ratio.points]
    assert costs == sorted(costs, reverse=True)  # more vCPUs per thread: cheaper VMs
    assert ratio.best_changes and ratio.points[0].binding_resource == "cpu"
    # tornado order: the widest swing first
    assert result.parameters[0].name == "cpu_ratio"
    assert result.baseline.value is None and result.baseline.best_id.endswith("/60m")


def test_lifetime_sweep_re_enumerates_months(example_plan):
    result = sensitivity(example_plan, [Vary("lifetime", 36, 60)], 60, steps=2)
    ids = [p.best_id for p in result.parameters[0].points]
    assert ids[0].endswith("/36m") and ids[1].endswith("/60m")


def test_impossible_value_in_range_is_rejected(example_plan):
    with pytest.raises(InvalidInput, match=r"utilisation=1\.5"):
        sensitivity(example_plan, [Vary("utilisation", 0.5, 1.5)], 60, steps=2)
