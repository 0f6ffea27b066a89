"""The health dashboard and alert rules use only metrics the collector really serves, and the rules pass
promtool's checks and their unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvmkit.backup.model import BackupManifest, DiskBackup
from kvmkit.backup.store import DirTarget
from kvmkit.benchmarks.health_scrape import fill
from kvmkit.config import BackupTarget
from kvmkit.errors import OperationFailed
from kvmkit.health import events
from kvmkit.health.metrics import HealthCollector

yaml = pytest.importorskip("yaml", reason="PyYAML reads the Prometheus rules")

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "kvmkit-health-rules.yaml"
DASHBOARD = CONTRIB / "grafana" / "kvmkit-health.json"
METRIC = re.compile(r"\bkvmkit_[a-z0-9_]+")


def _served_names(tmp_path: Path) -> set[str]:
    settings = fill(tmp_path / "state", snapshots=20, vms=2)
    target = tmp_path / "backup"
    target.mkdir()
    (target / "kvmkit-backup.json").write_text('{"format": 1}')
    from datetime import datetime

    now = datetime.now().astimezone()
    DirTarget("local", target).write_manifest(BackupManifest(
        vm="vm000", vm_uuid="00000000-0000-4000-8000-000000000000", snapshot="s", snapshot_created=now, created=now,
        target="local",
        disks=[DiskBackup(target="vda", driver="file", source="/d", handle="/d@s", size_bytes=1, full=True)]))
    settings = settings.model_copy(update={"backup_targets": [BackupTarget(name="local", path=target)]})
    events.record(settings.state_dir, events.EventKind.VERIFY_FAILURE, "vm000", OperationFailed("x"))
    events.record(settings.state_dir, events.EventKind.BACKUP_FAILURE, "vm000", OperationFailed("x"))
    registry = CollectorRegistry()
    registry.register(HealthCollector(lambda: settings))
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.samples:
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    return names


def _exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_rules_and_dashboard_use_only_served_metrics(tmp_path):
    served = _served_names(tmp_path)
    used = {name for expr in _exprs() for name in METRIC.findall(expr)}
    assert {"kvmkit_backup_last_success_timestamp_seconds", "kvmkit_recover_orphans"} <= used
    assert used <= served, f"not served: {sorted(used - served)}"


def test_dashboard_panels_have_unique_ids_and_host_and_vm_variables():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {"datasource", "instance", "vm"} <= {v["name"] for v in dashboard["templating"]["list"]}


def test_the_three_alerts_the_issue_asks_for_exist():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"KvmkitBackupMissing", "KvmkitSnapshotFreezeLong", "KvmkitRecoverOrphans"} <= alerts.keys()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_health_rules_and_their_unit_tests_pass():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", RULES.with_suffix(".test.yaml").name],
                          cwd=RULES.parent, capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def _dashboard_expr(title: str) -> str:
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("title") == title)
    [target] = panel["targets"]
    return target["expr"].replace("$instance", ".*").replace("$vm", ".*")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_the_stored_bytes_panel_shows_what_is_stored_across_a_prune(tmp_path):
    """Issue 24: 50 GB written in a day, then a prune freed 30 GB of older backups. As a counter the prune read as
    a reset and the panel's increase(…[1d]) showed 80 GB; the gauge shows what the target holds, before and after."""
    expr = _dashboard_expr("Backup data stored on the target")
    gb = 10**9
    # stored: 100 GB, +50 GB over the day (one backup per hour), then the prune frees 30 GB at 24h
    values = " ".join([str(100 * gb + min(h, 24) * 50 * gb // 24 - (30 * gb if h >= 25 else 0))
                       for h in range(0, 27)])
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1h",
            "input_series": [{"series": 'kvmkit_backup_stored_bytes{instance="h1", vm="db1", target="nfs"}',
                              "values": values}],
            "promql_expr_test": [
                {"expr": expr, "eval_time": "24h",
                 "exp_samples": [{"labels": '{instance="h1", vm="db1", target="nfs"}', "value": 150 * gb}]},
                {"expr": expr, "eval_time": "26h",
                 "exp_samples": [{"labels": '{instance="h1", vm="db1", target="nfs"}', "value": 120 * gb}]},
            ],
        }],
    }
    path = tmp_path / "stored.test.yaml"
    path.write_text(yaml.safe_dump(test))
    unit = subprocess.run(["promtool", "test", "rules", path.name], cwd=tmp_path, capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr
