"""`kvmkit backup bench --peers restic,borg --change 2`: kvmkit beside restic and borg on one disk image, one run.

The image is the issue's: 40 % holes, 30 % log-like text, 30 % random, in 1 MiB pieces in a seeded order. It
lives on a private XFS (reflink) loop filesystem made for the run (loop device with direct I/O, so dropping a
file's cache really sends the next read to the disk), and every tool's repository is on that same filesystem.

Per tool, in the same run and each leg on dropped caches (fsync + POSIX_FADV_DONTNEED of the source and of
every repository file):
    full         back up the image
    incremental  after `--change` % of its 4 KiB blocks were rewritten with random bytes, scattered
    unchanged    back up again with nothing changed
    restore      the newest backup into a new file, then checked against the image's sha256 (outside the timing)
kvmkit backs up reflink snapshots of the image (what `kvmkit snapshot` makes: a clone, taken in well under a
millisecond here); restic and borg read the image path itself, so their files caches see an unchanged file as
unchanged. Each leg is its own process: wall time, CPU seconds (user + sys), peak RSS (wait4) and bytes read
from the block device (ru_inblock: the same counter for every tool). "Stored" is the repository's size on disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from kvmkit.benchmarks.backup_image import make_image, scatter_writes
from kvmkit.benchmarks.backup_peer_tools import (  # noqa: F401 (the bench's parts, named here too)
    KVMKIT_CHILD,
    TOOLS,
    Kvmkit,
    Leg,
    LoopXfs,
    clone,
    drop_caches,
    file_sha,
    leg,
    tree_bytes,
)
from kvmkit.errors import EnvironmentProblem, InvalidInput

MiB, BLOCK = 1 << 20, 4096
PEERS = ("restic", "borg")


class ToolResult(BaseModel):
    tool: str
    version: str
    full_s: float
    full_cpu_s: float
    full_peak_rss_mib: float
    stored_bytes: int
    incremental_s: float
    incremental_cpu_s: float
    incremental_added_bytes: int
    incremental_read_bytes: int
    unchanged_s: float
    unchanged_read_bytes: int
    restore_s: float
    restore_peak_rss_mib: float
    restored_ok: bool
    peak_rss_mib: float
    change_method: str | None = None  # kvmkit: how the incremental found the changes
    incremental_disk_read_bytes: int | None = None  # kvmkit: bytes it read from the snapshot (its manifest)
    # kvmkit: the backup's own time, without the interpreter's start and imports (~0.3-0.8 s per leg here)
    full_in_process_s: float | None = None
    incremental_in_process_s: float | None = None
    unchanged_in_process_s: float | None = None
    restore_in_process_s: float | None = None
    unlock_s: float | None = None  # kvmkit: opening the target in each leg's process (scrypt for an encrypted one)


class SweepPoint(BaseModel):
    """One incremental of kvmkit (unencrypted) alone, after `change_percent` % more scattered 4 KiB writes."""
    change_percent: float
    changed_bytes: int
    seconds: float
    in_process_s: float
    read_bytes: int  # from the snapshot
    written_bytes: int
    over_full_in_process: float


class PeersResult(BaseModel):
    size_bytes: int
    data_bytes: int
    change_percent: float
    changed_bytes: int
    filesystem: str
    cores: int
    results: list[ToolResult]
    ratios: dict[str, dict[str, float]]  # peer → measure → kvmkit / peer
    targets: dict[str, float]  # the targets, measured: kvmkit against itself
    sweep: list[SweepPoint] = []  # --sweep: incremental cost against the changed share

    def rows(self) -> list[tuple[str, ...]]:
        return [(r.tool, f"{r.full_s:.2f}", f"{r.full_cpu_s:.2f}", f"{r.peak_rss_mib:.0f}",
                 f"{r.stored_bytes / 1e6:.1f}", f"{r.incremental_s:.2f}", f"{r.incremental_added_bytes / 1e6:.1f}",
                 f"{r.incremental_read_bytes / 1e6:.1f}", f"{r.unchanged_s:.2f}", f"{r.restore_s:.2f}")
                for r in self.results]


HEADERS = ["tool", "full s", "full CPU s", "peak RSS MiB", "stored MB", "incr s", "incr added MB",
           "incr read MB", "unchanged s", "restore s"]


RATIO_FIELDS = ("full_s", "full_cpu_s", "stored_bytes", "incremental_s", "incremental_added_bytes",
                "incremental_read_bytes", "unchanged_s", "restore_s", "peak_rss_mib")


def parse_peers(text: str) -> list[str]:
    peers = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise InvalidInput(f"--peers: unknown tool(s) {', '.join(unknown)} (known: {', '.join(PEERS)})")
    return peers


def parse_sweep(text: str) -> list[float]:
    """--sweep 0.5,1,5 → [0.5, 1.0, 5.0]; empty: no sweep. At most 3 points: each one deepens the delta chains
    (codec.MAX_DEPTH), and more would measure whole-chunk rewrites instead of the changed bytes."""
    try:
        points = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InvalidInput(f"--sweep {text!r}: a comma-separated list of percentages (e.g. 0.5,1,5)") from None
    if len(points) > 3 or any(not 0 < p <= 50 for p in points):
        raise InvalidInput("--sweep: at most 3 percentages, each in (0, 50]")
    return points


def run(folder: Path, size_mib: int, change_percent: float, peers: list[str],
        progress: Callable[[str], None] = lambda _m: None, sweep: list[float] | None = None) -> PeersResult:
    if size_mib < 16 or not 0 < change_percent <= 50:
        raise InvalidInput("--size must be ≥ 16 MiB and --change in (0, 50] %")
    if not folder.is_dir():
        raise InvalidInput(f"--dir {folder} is not a folder")
    missing = [p for p in peers if shutil.which(p) is None]
    if missing:
        raise EnvironmentProblem(f"peer(s) not installed: {', '.join(missing)} (apt-get install restic borgbackup)")
    fs_gib = max(4, -(-size_mib * 6 // 1024))  # image, three repositories, one restore at a time
    with LoopXfs(folder, fs_gib) as mnt:
        source = mnt / "disk.raw"
        data = make_image(source, size_mib)
        progress(f"image: {size_mib} MiB, {data / MiB:.0f} MiB of data (40 % holes, 30 % text, 30 % random) on "
                 f"a private XFS loop filesystem")
        tools = [TOOLS[name](mnt, source) for name in ("kvmkit", "kvmkit-enc", *peers)]
        for tool in tools:
            tool.init()
        legs: dict[str, dict[str, Leg]] = {t.name: {} for t in tools}
        info: dict[str, dict] = {t.name: {} for t in tools}
        stored: dict[str, int] = {}

        def round_(label: str, key: str) -> None:
            for tool in tools:
                drop_caches(source, tool.root)
                legs[tool.name][key], info[tool.name][key] = tool.backup(label)
                progress(f"{tool.name} {key}: {legs[tool.name][key].seconds:.2f} s")

        round_("s1", "full")
        stored = {t.name: tree_bytes(t.repo) for t in tools}
        changed = scatter_writes(source, change_percent)
        progress(f"changed {change_percent} % of the blocks: {changed / MiB:.1f} MiB in scattered 4 KiB writes")
        round_("s2", "incremental")
        added = {t.name: tree_bytes(t.repo) - stored[t.name] for t in tools}
        round_("s3", "unchanged")
        want = file_sha(source)
        results = []
        for tool in tools:
            dest = mnt / f"restore-{tool.name}"
            dest.mkdir()
            drop_caches(tool.root)
            rest, path = tool.restore(dest)
            progress(f"{tool.name} restore: {rest.seconds:.2f} s")
            ok = path.is_file() and file_sha(path) == want
            shutil.rmtree(dest, ignore_errors=True)
            full, incr, same = (legs[tool.name][k] for k in ("full", "incremental", "unchanged"))
            restored = getattr(tool, "restored", {})
            results.append(ToolResult(
                tool=tool.name, version=tool.version(), full_s=full.seconds, full_cpu_s=full.cpu_seconds,
                full_peak_rss_mib=full.peak_rss_mib, stored_bytes=stored[tool.name], incremental_s=incr.seconds,
                incremental_cpu_s=incr.cpu_seconds, incremental_added_bytes=added[tool.name],
                incremental_read_bytes=incr.read_bytes, unchanged_s=same.seconds, unchanged_read_bytes=same.read_bytes,
                restore_s=rest.seconds, restore_peak_rss_mib=rest.peak_rss_mib, restored_ok=ok,
                peak_rss_mib=max(x.peak_rss_mib for x in (full, incr, same, rest)),
                change_method=info[tool.name]["incremental"].get("method"),
                incremental_disk_read_bytes=info[tool.name]["incremental"].get("read"),
                restore_in_process_s=round(restored["seconds"], 3) if "seconds" in restored else None,
                unlock_s=round(info[tool.name]["full"]["unlock"], 3) if "unlock" in info[tool.name]["full"] else None,
                **{f"{k}_in_process_s": round(info[tool.name][k]["seconds"], 3)
                   for k in ("full", "incremental", "unchanged") if "seconds" in info[tool.name][k]}))
        points = _sweep(tools[0], source, sweep or [], results[0], progress)  # type: ignore[arg-type]
    out = _summarise(size_mib, data, change_percent, changed, results)
    out.sweep = points
    return out


def _sweep(ours: Kvmkit, source: Path, percents: list[float], result: ToolResult,
           progress: Callable[[str], None]) -> list[SweepPoint]:
    """kvmkit's incremental at more change levels: each after that share of fresh scattered writes, backed up
    against the previous backup (so it, too, has exactly those writes to find), on dropped caches."""
    points = []
    for number, percent in enumerate(percents):
        changed = scatter_writes(source, percent, seed=100 + number)
        drop_caches(source, ours.root)
        run_leg, info = ours.backup(f"w{number}")
        seconds = round(info["seconds"], 3)  # the ratio is of the figures printed beside it
        points.append(SweepPoint(change_percent=percent, changed_bytes=changed, seconds=run_leg.seconds,
                                 in_process_s=seconds, read_bytes=info["read"], written_bytes=info["written"],
                                 over_full_in_process=round(seconds / (result.full_in_process_s or 1), 3)))
        progress(f"kvmkit incremental at {percent} %: {info['seconds']:.2f} s in process "
                 f"({points[-1].over_full_in_process:.3f}× the full)")
    return points


def _summarise(size_mib: int, data: int, change_percent: float, changed: int,
               results: list[ToolResult]) -> PeersResult:
    ours, sealed = results[0], results[1]
    ratios = {}
    for peer in results[2:]:
        ratios[peer.tool] = {f: round(getattr(ours, f) / getattr(peer, f), 3) for f in RATIO_FIELDS
                             if getattr(peer, f)}
    targets = {"incremental_read_over_changed": round(ours.incremental_read_bytes / changed, 3),
               "incremental_disk_read_over_changed": round((ours.incremental_disk_read_bytes or 0) / changed, 3),
               "incremental_over_full": round(ours.incremental_s / ours.full_s, 3),
               "unchanged_over_full": round(ours.unchanged_s / ours.full_s, 3)}
    if ours.full_in_process_s and ours.incremental_in_process_s is not None and ours.unchanged_in_process_s is not None:
        targets["incremental_over_full_in_process"] = round(ours.incremental_in_process_s / ours.full_in_process_s, 3)
        targets["unchanged_over_full_in_process"] = round(ours.unchanged_in_process_s / ours.full_in_process_s, 3)
    for field in ("full_s", "incremental_s", "restore_s", "stored_bytes"):  # the same run: encrypted / clear
        targets[f"encrypted_over_clear_{field}"] = round(getattr(sealed, field) / getattr(ours, field), 3)
    # the data path alone: each leg's own time after the target is open. Opening an encrypted target costs a
    # fixed scrypt (~0.25 s, once per process, whatever the disk size), reported beside it as unlock_s
    for leg_name in ("full", "incremental", "restore"):
        mine, theirs = getattr(sealed, f"{leg_name}_in_process_s"), getattr(ours, f"{leg_name}_in_process_s")
        if mine and theirs:
            targets[f"encrypted_over_clear_{leg_name}_in_process"] = round(mine / theirs, 3)
    if sealed.unlock_s is not None:
        targets["encrypted_unlock_s"] = sealed.unlock_s
    borg = next((r for r in results if r.tool == "borg"), None)
    if borg is not None:
        targets["incremental_over_borg_incremental"] = round(ours.incremental_s / borg.incremental_s, 3)
    return PeersResult(size_bytes=size_mib * MiB, data_bytes=data, change_percent=change_percent,
                       changed_bytes=changed, filesystem="xfs (reflink) on a direct-I/O loop device",
                       cores=len(os.sched_getaffinity(0)), results=results, ratios=ratios, targets=targets)
