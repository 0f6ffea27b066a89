"""The health collector on real records: a catalog written by kvmkit's own Catalog, manifests on a folder target,
the outcome log — read without taking the catalog's lock."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvmkit.backup.model import BackupManifest, DiskBackup
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import EnvironmentProblem, OperationFailed
from kvmkit.health import events
from kvmkit.health.metrics import HealthCollector
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.model import Mode, Snapshot, State

NOW = datetime(2026, 12, 3, 10, 0).astimezone()



def vm_uuid_of(vm: str) -> str:
    """A real UUID per VM name (manifests hold only UUIDs)."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_DNS, vm))

def _snap(vm: str, name: str, minutes_ago: float, state: State = State.READY, freeze_ms: float | None = 100.0,
          total_ms: float = 500.0) -> Snapshot:
    return Snapshot(vm_uuid=vm_uuid_of(vm), vm=vm, name=name, created=(NOW - timedelta(minutes=minutes_ago)).replace(
        tzinfo=None), mode=Mode.QUIESCED, state=state, freeze_ms=freeze_ms, total_ms=total_ms)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    target = tmp_path / "backup"
    target.mkdir()
    return Settings(state_dir=tmp_path / "state", backup_targets=[BackupTarget(name="local", path=target)])


def _scrape(settings: Settings) -> dict[str, list]:
    registry = CollectorRegistry()
    registry.register(HealthCollector(lambda: settings, clock=lambda: NOW))
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    [value] = [v for got, v in samples[name] if all(got.get(k) == want for k, want in labels.items())]
    return value


def test_last_success_and_freeze_come_from_the_newest_ready_snapshot(settings):
    catalog = Catalog(settings.catalog_path)
    catalog.insert(_snap("vm1", "old", 120, freeze_ms=1500.0))
    catalog.insert(_snap("vm1", "new", 10, freeze_ms=80.0, total_ms=2000.0))
    catalog.insert(_snap("vm1", "broken", 1, state=State.CREATING))  # not a success
    catalog.insert(_snap("vm2", "only", 30, freeze_ms=None))  # crash mode: no freeze window
    catalog.close()
    s = _scrape(settings)
    newest = (NOW - timedelta(minutes=10) + timedelta(seconds=2)).timestamp()
    assert _value(s, "kvmkit_snapshot_last_success_timestamp_seconds", vm="vm1") == pytest.approx(newest)
    assert _value(s, "kvmkit_snapshot_last_freeze_seconds", vm="vm1") == pytest.approx(0.08)
    assert [labels for labels, _ in s["kvmkit_snapshot_last_freeze_seconds"]] == [{"vm": "vm1"}]
    assert _value(s, "kvmkit_snapshot_freeze_seconds_count", vm="vm1") == 2
    assert _value(s, "kvmkit_snapshot_freeze_seconds_bucket", vm="vm1", le="1.0") == 1
    assert _value(s, "kvmkit_snapshot_freeze_seconds_bucket", vm="vm1", le="2.5") == 2
    assert _value(s, "kvmkit_snapshot_freeze_seconds_sum", vm="vm1") == pytest.approx(1.58)
    assert _value(s, "kvmkit_health_up") == 1


def test_orphans_count_unfinished_rows_past_the_grace_only(settings):
    catalog = Catalog(settings.catalog_path)
    catalog.insert(_snap("vm1", "ok", 60))
    catalog.insert(_snap("vm1", "stuck", 30, state=State.CREATING))
    catalog.insert(_snap("vm1", "running-now", 0.5, state=State.CREATING))  # an operation still in progress
    catalog.insert(_snap("vm2", "fine", 60))
    catalog.close()
    s = _scrape(settings)
    assert _value(s, "kvmkit_recover_orphans", vm="vm1") == 1
    assert _value(s, "kvmkit_recover_orphans", vm="vm2") == 0


def test_failures_and_verify_failures_come_from_the_outcome_log(settings):
    events.record(settings.state_dir, events.EventKind.SNAPSHOT_FAILURE, "vm1", EnvironmentProblem("no agent"))
    events.record(settings.state_dir, events.EventKind.SNAPSHOT_FAILURE, "vm1", EnvironmentProblem("no agent"))
    events.record(settings.state_dir, events.EventKind.SNAPSHOT_FAILURE, "vm1", OperationFailed("rbd"))
    events.record(settings.state_dir, events.EventKind.VERIFY_FAILURE, "vm2", OperationFailed("damaged"))
    log = events.log_path(settings.state_dir)
    assert log.stat().st_mode & 0o777 == 0o600
    with log.open("a") as fh:
        fh.write("not json\n")  # read back as untrusted: skipped and counted
    s = _scrape(settings)
    assert _value(s, "kvmkit_snapshot_failures_total", vm="vm1", reason="environment_problem") == 2
    assert _value(s, "kvmkit_snapshot_failures_total", vm="vm1", reason="operation_failed") == 1
    assert _value(s, "kvmkit_backup_verify_failures_total", vm="vm2") == 1
    assert _value(s, "kvmkit_health_malformed_records") == 1


def test_the_outcome_log_rotates_past_its_bound(settings, monkeypatch):
    monkeypatch.setattr(events, "MAX_BYTES", 500)
    for _ in range(20):
        events.record(settings.state_dir, events.EventKind.SNAPSHOT_FAILURE, "vm1", OperationFailed("x"))
    log = events.log_path(settings.state_dir)
    assert log.with_name("events.jsonl.1").exists()
    assert log.stat().st_size <= 500 + 200
    recorded, bad = events.read(settings.state_dir)
    assert bad == 0 and 0 < len(recorded) < 20


def _manifest(vm: str, snapshot: str, hours_ago: float, written: int) -> BackupManifest:
    created = NOW - timedelta(hours=hours_ago)
    return BackupManifest(vm=vm, vm_uuid=vm_uuid_of(vm), snapshot=snapshot, snapshot_created=created, created=created,
                          target="local", disks=[DiskBackup(target="vda", driver="file", source="/d", handle="/d@s",
                                                            size_bytes=1 << 20, full=True, written_bytes=written)])


def test_backup_metrics_from_the_manifests_on_a_folder_target(settings):
    from kvmkit.backup.store import DirTarget

    root = settings.backup_targets[0].path
    (root / "kvmkit-backup.json").write_text('{"format": 1}')
    store = DirTarget("local", root)
    store.write_manifest(_manifest("vm1", "a", 30, 1000))
    store.write_manifest(_manifest("vm1", "b", 3, 250))
    s = _scrape(settings)
    assert _value(s, "kvmkit_backup_last_success_timestamp_seconds", vm="vm1", target="local") == pytest.approx(
        (NOW - timedelta(hours=3)).timestamp())
    assert _value(s, "kvmkit_backup_stored_bytes", vm="vm1", target="local") == 1250
    (root / "manifests" / vm_uuid_of("vm1") / "c.json").write_text("{broken")
    s = _scrape(settings)
    assert _value(s, "kvmkit_health_malformed_records") == 1


def test_a_scrape_does_not_wait_for_a_writer_holding_the_catalog(settings):
    catalog = Catalog(settings.catalog_path)
    catalog.insert(_snap("vm1", "a", 5))
    started, release = threading.Event(), threading.Event()

    def writer() -> None:
        with catalog.tx() as db:  # BEGIN IMMEDIATE: what every catalog write holds
            db.execute("UPDATE snapshots SET freeze_ms = 90")
            started.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert started.wait(5)
        t0 = time.perf_counter()
        s = _scrape(settings)
        elapsed = time.perf_counter() - t0
    finally:
        release.set()
        thread.join()
        catalog.close()
    assert _value(s, "kvmkit_snapshot_last_freeze_seconds", vm="vm1") == pytest.approx(0.1)  # the committed value
    assert elapsed < 1.0  # the reader's busy timeout is 1 s: it never waited on the writer


def test_a_broken_config_costs_only_the_health_metrics(tmp_path):
    from kvmkit.errors import InvalidInput

    def broken() -> Settings:
        raise InvalidInput("config.toml: not valid TOML")

    registry = CollectorRegistry()
    registry.register(HealthCollector(broken))
    text = generate_latest(registry).decode()
    assert "kvmkit_health_up 0.0" in text and "kvmkit_snapshot" not in text


def test_scrape_benchmark_reports_a_ratio_against_the_bare_select():
    from kvmkit.benchmarks import health_scrape

    result = health_scrape.run(snapshots=200, vms=10, rounds=3)
    assert result.snapshots == 200 and result.scrape_median_ms > 0 and result.anchor_select_median_ms > 0
    assert result.ratio == pytest.approx(result.scrape_median_ms / result.anchor_select_median_ms, rel=0.1)
    assert result.exposition_bytes > 1000 and result.peak_rss_mib > 0
