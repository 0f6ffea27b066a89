"""How long one Prometheus scrape of the health collector takes with N catalogued snapshots (target: < 50 ms for
1,000), against an anchor measured in the same run: the bare `SELECT` of the same catalog rows (the floor any
reader of the catalog pays). Prints the median scrape, the ratio and peak RSS.

    python -m kvmkit.benchmarks.health_scrape [--snapshots 1000] [--vms 50] [--rounds 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel

from kvmkit.config import Settings
from kvmkit.errors import OperationFailed
from kvmkit.health import events
from kvmkit.health.metrics import HealthCollector
from kvmkit.rss import peak_rss_mib
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State


class ScrapeResult(BaseModel):
    snapshots: int
    vms: int
    rounds: int
    scrape_median_ms: float
    scrape_max_ms: float
    anchor_select_median_ms: float
    ratio: float
    exposition_bytes: int
    peak_rss_mib: float


def fill(state_dir: Path, snapshots: int, vms: int) -> Settings:
    """A catalog as kvmkit writes it (its own Catalog class), with two disks per snapshot and a few failures."""
    settings = Settings(state_dir=state_dir)
    catalog = Catalog(settings.catalog_path)
    start = datetime.now() - timedelta(days=30)
    disks = [DiskSnapshot(target=t, driver="file", source=f"/pool/{t}.raw", handle=f"/pool/{t}.raw@s.kvmkit",
                          size_bytes=10 << 30, extents=12) for t in ("vda", "vdb")]
    for i in range(snapshots):
        vm = f"vm{i % vms:03d}"
        catalog.insert(Snapshot(vm_uuid=f"uuid-{vm}", vm=vm, name=f"snap-{i:06d}",
                                created=start + timedelta(minutes=i), mode=Mode.QUIESCED, state=State.READY,
                                freeze_ms=20.0 + i % 400, total_ms=300.0, storage_ms=5.0, disks=disks))
    catalog.close()
    for i in range(vms):
        events.record(state_dir, events.EventKind.SNAPSHOT_FAILURE, f"vm{i:03d}", OperationFailed("x"))
    return settings


def run(snapshots: int = 1000, vms: int = 50, rounds: int = 20) -> ScrapeResult:
    with tempfile.TemporaryDirectory(prefix="kvmkit-bench-health-") as folder:
        settings = fill(Path(folder), snapshots, vms)
        registry = CollectorRegistry()
        registry.register(HealthCollector(lambda: settings))
        scrape, anchor, size = [], [], 0
        for round_ in range(rounds + 1):  # round 0 warms up (imports, page cache)
            t0 = time.perf_counter()
            db = sqlite3.connect(f"file:{settings.catalog_path}?mode=ro", uri=True)
            rows = db.execute("SELECT * FROM snapshots").fetchall()
            db.close()
            t1 = time.perf_counter()
            size = len(generate_latest(registry))
            t2 = time.perf_counter()
            if round_:
                anchor.append((t1 - t0) * 1000)
                scrape.append((t2 - t1) * 1000)
        assert len(rows) == snapshots
    med, base = statistics.median(scrape), statistics.median(anchor)
    return ScrapeResult(snapshots=snapshots, vms=vms, rounds=rounds, scrape_median_ms=round(med, 2),
                        scrape_max_ms=round(max(scrape), 2), anchor_select_median_ms=round(base, 2),
                        ratio=round(med / base, 1) if base else 0.0, exposition_bytes=size,
                        peak_rss_mib=peak_rss_mib())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.snapshots, args.vms, args.rounds)
    if args.json:
        print(json.dumps(result.model_dump()))
        return
    print(f"health scrape, {result.snapshots} snapshots of {result.vms} VMs: median {result.scrape_median_ms} ms "
          f"(max {result.scrape_max_ms} ms) vs bare SELECT of the rows {result.anchor_select_median_ms} ms "
          f"= {result.ratio}x; {result.exposition_bytes} bytes exposed; peak RSS {result.peak_rss_mib} MiB")


if __name__ == "__main__":
    main()
