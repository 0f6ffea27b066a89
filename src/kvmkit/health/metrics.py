"""Snapshot and backup health as Prometheus metrics: a custom collector, computed from the records at scrape time.

Every value comes from what kvmkit already keeps — the snapshot catalog (read-only, unlocked: records.py), the
backup manifests of folder targets (backups.py) and the outcome log (events.py) — so the exporter holds no state
of its own that a restart could lose. Label `vm` is the libvirt name, `target` the backup target.

  kvmkit_snapshot_last_success_timestamp_seconds{vm}   newest ready snapshot, when it became ready
  kvmkit_snapshot_last_freeze_seconds{vm}              the freeze window of that snapshot (the alert's input)
  kvmkit_snapshot_freeze_seconds{vm}                   histogram over the catalogued snapshots' freeze windows
  kvmkit_snapshot_failures_total{vm,reason}            failed creates by error class (outcome log)
  kvmkit_backup_last_success_timestamp_seconds{vm,target}
  kvmkit_backup_stored_bytes{vm,target}                bytes the backups still on the target wrote (a gauge)
  kvmkit_backup_verify_failures_total{vm}              verify runs that found damage (outcome log)
  kvmkit_recover_orphans{vm}                           catalog rows and journal entries `recover` would reconcile

The histogram is a sum over records that retention deletes, so it can go down; Prometheus treats a decrease as a
counter reset, which `rate()`/`increase()` absorb. Bytes stored are a gauge for that reason: as a counter, a prune
read as a reset and `increase(…[1d])` showed 80 GB written on a day 50 GB were.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kvmkit.config import Settings
from kvmkit.health import events
from kvmkit.health.backups import ManifestCache
from kvmkit.health.records import JournalRecord, SnapshotRecord, read_catalog

FREEZE_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ORPHAN_GRACE = timedelta(minutes=2)  # a row younger than this may belong to an operation still running
UNFINISHED = ("creating", "deleting", "error")


class HealthCollector(Collector):
    """Registered once in the exporter; `settings` is a loader, so a config fixed later is read at the next scrape
    and a broken one costs only these metrics (kvmkit_health_up 0), never the exporter."""

    def __init__(self, settings: Callable[[], Settings], clock: Callable[[], datetime] | None = None) -> None:
        self._settings = settings
        self._clock = clock or (lambda: datetime.now().astimezone())
        self._manifests = ManifestCache()

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        up = GaugeMetricFamily("kvmkit_health_up", "1 if the snapshot and backup records could be read.")
        try:
            settings = self._settings()
            snapshots, journal, malformed = read_catalog(settings.catalog_path)
            outcome, bad_lines = events.read(settings.state_dir)
            backups = self._manifests.summaries(settings)
        except Exception:  # a scrape must answer: the exporter's other metrics stay up
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from snapshot_metrics(snapshots)
        yield from outcome_metrics(outcome)
        yield from backup_metrics(backups)
        yield recover_orphans(snapshots, journal, self._clock())
        bad = GaugeMetricFamily("kvmkit_health_malformed_records",
                                "Catalog rows, log lines and manifests skipped as unreadable.")
        bad.add_metric([], malformed + bad_lines + self._manifests.malformed)
        yield bad
        cost = GaugeMetricFamily("kvmkit_health_collect_seconds", "Time this collector took for the scrape.")
        cost.add_metric([], time.perf_counter() - t0)
        yield cost


def snapshot_metrics(snapshots: list[SnapshotRecord]) -> Iterator[Metric]:
    last = GaugeMetricFamily("kvmkit_snapshot_last_success_timestamp_seconds",
                             "When the VM's newest ready snapshot became ready (Unix time).", labels=["vm"])
    last_freeze = GaugeMetricFamily("kvmkit_snapshot_last_freeze_seconds",
                                    "Freeze (or pause) window of the VM's newest ready snapshot.", labels=["vm"])
    hist = HistogramMetricFamily("kvmkit_snapshot_freeze_seconds",
                                 "Freeze windows of the catalogued ready snapshots (freeze call start to thaw end).",
                                 labels=["vm"])
    newest: dict[str, tuple[float, SnapshotRecord]] = {}
    windows: dict[str, list[float]] = defaultdict(list)
    for snap in snapshots:
        if snap.state != "ready":
            continue
        finished = snap.finished_ts
        if snap.vm not in newest or finished > newest[snap.vm][0]:
            newest[snap.vm] = (finished, snap)
        if snap.freeze_ms is not None:
            windows[snap.vm].append(snap.freeze_ms / 1000)
    for vm, (finished, snap) in sorted(newest.items()):
        last.add_metric([vm], finished)
        if snap.freeze_ms is not None:
            last_freeze.add_metric([vm], snap.freeze_ms / 1000)
    for vm, values in sorted(windows.items()):
        values.sort()
        cumulative = [(str(le), float(bisect_right(values, le))) for le in FREEZE_BUCKETS]
        hist.add_metric([vm], [*cumulative, ("+Inf", float(len(values)))], sum_value=sum(values))
    yield from (last, last_freeze, hist)


def outcome_metrics(outcome: list[events.Event]) -> Iterator[Metric]:
    failures = CounterMetricFamily("kvmkit_snapshot_failures", "Snapshot creates that failed, by error class.",
                                   labels=["vm", "reason"])
    verify = CounterMetricFamily("kvmkit_backup_verify_failures", "Backup verify runs that found damaged chunks.",
                                 labels=["vm"])
    backup = CounterMetricFamily("kvmkit_backup_failures", "Backups that failed, by error class.",
                                 labels=["vm", "reason"])
    counts: dict[tuple[events.EventKind, str, str], int] = defaultdict(int)
    for event in outcome:
        counts[(event.kind, event.vm, event.reason)] += 1
    verify_by_vm: dict[str, int] = defaultdict(int)
    for (kind, vm, reason), n in sorted(counts.items()):
        if kind is events.EventKind.SNAPSHOT_FAILURE:
            failures.add_metric([vm, reason], n)
        elif kind is events.EventKind.BACKUP_FAILURE:
            backup.add_metric([vm, reason], n)
        else:
            verify_by_vm[vm] += n
    for vm, n in sorted(verify_by_vm.items()):
        verify.add_metric([vm], n)
    yield from (failures, backup, verify)


def backup_metrics(backups) -> Iterator[Metric]:
    last = GaugeMetricFamily("kvmkit_backup_last_success_timestamp_seconds",
                             "When the VM's newest backup on the target was written (Unix time).",
                             labels=["vm", "target"])
    written = GaugeMetricFamily("kvmkit_backup_stored_bytes", "Bytes written by the backups still on the target "
                                "(what they store; a prune lowers it).", labels=["vm", "target"])
    newest: dict[tuple[str, str], float] = {}
    total: dict[tuple[str, str], int] = defaultdict(int)
    for b in backups:
        key = (b.vm, b.target)
        newest[key] = max(newest.get(key, 0.0), b.created.timestamp())
        total[key] += b.written_bytes
    for key in sorted(newest):
        last.add_metric(list(key), newest[key])
        written.add_metric(list(key), total[key])
    yield from (last, written)


def recover_orphans(snapshots: list[SnapshotRecord], journal: list[JournalRecord], now: datetime) -> Metric:
    orphans = GaugeMetricFamily("kvmkit_recover_orphans",
                                "Unfinished catalog rows and journal entries older than 2 min: work for "
                                "`kvmkit snapshot recover`.", labels=["vm"])
    names = {s.vm_uuid: s.vm for s in snapshots}
    counts: dict[str, int] = {s.vm: 0 for s in snapshots}
    cutoff = now - ORPHAN_GRACE
    for snap in snapshots:
        if snap.state in UNFINISHED and _aware(snap.created) < cutoff:
            counts[snap.vm] += 1
    for entry in journal:
        if _aware(entry.created) < cutoff:
            vm = names.get(entry.vm_uuid, entry.vm_uuid)
            counts[vm] = counts.get(vm, 0) + 1
    for vm, n in sorted(counts.items()):
        orphans.add_metric([vm], n)
    return orphans


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.astimezone()


def collector() -> HealthCollector:
    """What the exporter registers: settings are loaded at each scrape (cheap: one small TOML file)."""
    from kvmkit import config

    return HealthCollector(config.load)
