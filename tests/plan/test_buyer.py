"""The buyer's figures: capex/opex split, lifetime totals, fleet totals, configuration ids read back, the
recommendation and the assumptions."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kvmkit.plan import buyer
from kvmkit.plan.cli import app
from kvmkit.plan.costmodel import BREAKDOWN_KEYS, evaluate_node
from kvmkit.plan.fleet import plan_fleet
from kvmkit.plan.records import summarise
from kvmkit.plan.space import enumerate_space
from kvmkit.plan.vectorised import evaluate_space
from tests.plan.conftest import EXAMPLE


def test_split_puts_one_off_costs_in_capex_and_the_rest_in_opex():
    breakdown = dict.fromkeys(BREAKDOWN_KEYS, 0.0) | {"hardware": 100.0, "rack_network": 10.0, "power": 30.0,
                                                       "operations": 5.0}
    s = buyer.split(breakdown, 36)
    assert s.capex == pytest.approx(110.0 * 36) and s.opex_per_month == pytest.approx(35.0)
    assert s.lifetime_total == pytest.approx(s.capex + 35.0 * 36)
    assert s.lifetime_total == pytest.approx(sum(breakdown.values()) * 36)  # nothing lost or counted twice
    per_vm = s.per(10)
    assert per_vm.capex == pytest.approx(s.capex / 10) and per_vm.months == 36


def test_every_cost_key_is_either_capex_or_opex():
    assert sorted(buyer.CAPEX_KEYS + buyer.OPEX_KEYS) == sorted(BREAKDOWN_KEYS)
    assert set(buyer.COST_LABELS) == set(BREAKDOWN_KEYS)


def test_node_spec_reads_a_configuration_id_back(example_plan):
    ev = evaluate_space(example_plan, enumerate_space(example_plan, [36]))
    best = summarise(example_plan, ev, 1).configurations[0]
    spec = buyer.node_spec(example_plan, best.id)
    assert spec is not None and f"{spec.id}/36m" == best.id
    node = evaluate_node(example_plan.site, example_plan.policy, example_plan.licences, spec, 36)
    assert node.monthly_cost == pytest.approx(best.monthly_cost_per_node, rel=1e-6)
    assert buyer.node_spec(example_plan, "no/such/thing") is None
    assert buyer.node_spec(example_plan, "1U-2S/2xNOPE/24x128G/7x7.68T-NVMe/36m") is None


def test_fleet_totals_add_up_to_the_fleet_monthly_cost(example_plan):
    ev = evaluate_space(example_plan, enumerate_space(example_plan, [60]))
    fleet = plan_fleet(example_plan, ev, 60, False, 3, 0.01, 10.0, False)
    totals = buyer.fleet_totals(example_plan, fleet)
    assert totals.split is not None and totals.nodes == fleet.total_nodes and totals.racks == fleet.racks
    assert totals.vms == sum(d.count for d in example_plan.demand)
    assert totals.split.capex + totals.split.opex_per_month * 60 == pytest.approx(fleet.total_monthly_cost * 60)
    assert 0 < totals.split.capex < totals.split.lifetime_total


def test_recommendation_names_each_lifetime_and_the_cheaper_one(example_plan):
    views = []
    for months in (36, 60):
        summary = summarise(example_plan, evaluate_space(example_plan, enumerate_space(example_plan, [months])), 3)
        views.append(buyer.LifetimeView(months, summary, None, None, None))
    text = buyer.recommendation(views, "USD")
    assert "Over 36 months" in text and "Over 60 months" in text and "USD per VM-month" in text
    cheaper = min(views, key=lambda v: v.best.cost_per_vm_month)
    assert f"the {cheaper.months}-month lifetime is cheapest" in text
    empty = summarise(example_plan, evaluate_space(example_plan, enumerate_space(example_plan, [36])), 0)
    empty = empty.model_copy(update={"configurations": []})
    assert "nothing to recommend" in buyer.recommendation([buyer.LifetimeView(36, empty, None, None, None)], "USD")


def test_assumptions_list_every_site_and_policy_input(example_plan):
    rows = dict(buyer.assumptions(example_plan, "EUR"))
    assert rows["Electricity price per kWh"] == f"{example_plan.site.electricity_price_per_kwh:,.2f} EUR"
    assert rows["Lifetimes compared (months)"] == "36, 60"
    assert rows["Storage replicas"] == f"{example_plan.policy.storage_replicas:g}"
    assert len(rows) >= len(type(example_plan.site).model_fields) + len(type(example_plan.policy).model_fields) - 3


@pytest.mark.parametrize("currency", ["", "EUR;<script>", "dollars and cents"])
def test_report_refuses_a_bad_currency(tmp_path, currency):
    result = CliRunner().invoke(app, ["report", str(EXAMPLE), "--html", str(tmp_path / "r.html"), "--currency",
                                      currency])
    assert result.exit_code != 0 and not (tmp_path / "r.html").exists()
