"""The shipped Grafana dashboard and Prometheus rules only use metrics the exporter really serves, and the
rules pass promtool's own checks and unit tests (when promtool is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvmkit.benchmarks.congestion import loadgen
from kvmkit.congestion.exporter import CongestionCollector
from kvmkit.congestion.procfs import ProcReader

yaml = pytest.importorskip("yaml", reason="PyYAML (Debian python3-yaml) reads the Prometheus rules")

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "kvmkit-congestion-rules.yaml"
DASHBOARD = CONTRIB / "grafana" / "kvmkit-congestion.json"
METRIC = re.compile(r"\bkvmkit_[a-z0-9_]+")


def _served_names() -> set[str]:
    with loadgen("contrib-vm", 1, 0, None, seconds=30) as proc:
        registry = CollectorRegistry()
        registry.register(CongestionCollector(ProcReader(pids=[proc.pid])))
        text = generate_latest(registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def _exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_rules_and_dashboard_use_only_served_metrics():
    served = _served_names()
    used = {name for expr in _exprs() for name in METRIC.findall(expr)}
    assert used, "no kvmkit metric found in the contrib files"
    assert used <= served, f"not served: {sorted(used - served)}"


def test_dashboard_panels_have_unique_ids_and_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {"datasource", "instance", "vm"} <= {v["name"] for v in dashboard["templating"]["list"]}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", RULES.with_suffix(".test.yaml").name],
                          cwd=RULES.parent, capture_output=True, text=True)  # fmt: skip
    assert unit.returncode == 0, unit.stdout + unit.stderr
