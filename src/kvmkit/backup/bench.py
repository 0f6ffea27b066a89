"""`kvmkit backup bench`: a full backup's read throughput vs `dd` reading the same source in the same run, with
the backup's peak RSS (measured on its own child process with wait4, so the bench's own memory is not counted).

Both reads start cold (the source's page cache is dropped with posix_fadvise before each). `--sparse-gib N`
makes an N GiB sparse disk with 4 KiB of unique data in every `stride`-th chunk instead, to show that memory
stays flat on a large disk: the backup reads only the chunks that hold data and keeps at most 2 × workers chunks
in flight; what grows with the disk is only the manifest's chunk list (one entry per non-zero chunk).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from kvmkit.backup.model import DEFAULT_CHUNK_SIZE
from kvmkit.errors import EnvironmentProblem, InvalidInput

CHILD = """
import json, sys
from datetime import datetime
from pathlib import Path
from kvmkit.backup.create import Backup
from kvmkit.backup.store import DirTarget
from kvmkit.config import Settings
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State
src, target, compression, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
snap = Snapshot(vm_uuid="bench", vm="bench", name=name, created=datetime.now(), mode=Mode.OFFLINE,
                state=State.READY, disks=[DiskSnapshot(target="vda", driver="file", source=str(src),
                handle=str(src), size_bytes=src.stat().st_size)])
m = Backup(Settings(), DirTarget("bench", target), compression, lambda _n: None).run(snap)
print(json.dumps({"seconds": m.seconds, "read": m.read_bytes, "written": m.written_bytes,
                  "chunks": len(m.disks[0].chunks), "manifest": m.manifest_bytes}))
"""


class BenchResult(BaseModel):
    source: str
    target: str
    compression: str
    rounds: int
    size_bytes: int
    data_bytes: int
    dd_seconds: float
    dd_mb_s: float
    backup_seconds: float
    backup_mb_s: float  # bytes the backup read / its wall time
    ratio_vs_dd: float
    written_bytes: int
    target_write_mb_s: float  # dd conv=fsync of the same byte count into the target folder
    unchanged_mb_s: float  # a second backup of the same source: read + hash only, every chunk already stored
    unchanged_written: int
    manifest_bytes: int
    chunks: int
    peak_rss_mib: float

    def rows(self) -> list[tuple[str, str]]:
        return [("disk size", f"{self.size_bytes / 2**30:.2f} GiB"),
                ("data in it", f"{self.data_bytes / 2**20:.0f} MiB"),
                ("dd read (median)", f"{self.dd_mb_s:.0f} MB/s ({self.dd_seconds:.2f} s)"),
                ("backup (median)", f"{self.backup_mb_s:.0f} MB/s ({self.backup_seconds:.2f} s)"),
                ("backup / dd", f"{self.ratio_vs_dd:.2f}×"),
                ("written to target", f"{self.written_bytes / 2**20:.1f} MiB"),
                ("dd write to target", f"{self.target_write_mb_s:.0f} MB/s (fsync'd; the write bound)"),
                ("unchanged re-run", f"{self.unchanged_mb_s:.0f} MB/s ({self.unchanged_mb_s / self.dd_mb_s:.2f}× dd), "
                                     f"wrote {self.unchanged_written} B"),
                ("chunks in manifest", str(self.chunks)), ("manifest", f"{self.manifest_bytes / 1024:.0f} KiB"),
                ("backup peak RSS", f"{self.peak_rss_mib:.0f} MiB")]


def make_dense(path: Path, size_mib: int) -> int:
    """Random first half of each MiB (incompressible), text second half (compressible): both codec paths."""
    text = (b"kvmkit backup bench: compressible half of the chunk. " * 20000)[: 512 << 10]
    with path.open("wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(512 << 10) + text)
    return size_mib << 20


def make_sparse(path: Path, size_gib: int, stride: int) -> int:
    with path.open("wb") as fh:
        fh.truncate(size_gib << 30)
        for index in range(0, (size_gib << 30) // DEFAULT_CHUNK_SIZE, stride):
            fh.seek(index * DEFAULT_CHUNK_SIZE)
            fh.write(os.urandom(4096))
    return ((size_gib << 30) // DEFAULT_CHUNK_SIZE // stride) * 4096


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def dd_read(path: Path) -> float:
    if shutil.which("dd") is None:
        raise EnvironmentProblem("dd is not installed")
    drop_cache(path)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "conv=sparse"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def backup_child(src: Path, target: Path, compression: str, name: str = "full") -> tuple[dict, float]:
    drop_cache(src)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(target), compression, name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"backup child failed: {err.decode(errors='replace').strip().splitlines()[-1:]}")
    return json.loads(out), usage.ru_maxrss / 1024


def dd_write(target: Path, nbytes: int) -> float:
    """How fast the target takes the same number of bytes the backup wrote (fsync'd): the backup's write bound."""
    path = target / "dd-write.probe"
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={max(1, nbytes >> 22)}", "conv=fsync"],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def run(folder: Path, size_mib: int, sparse_gib: int = 0, stride: int = 16, compression: str = "zlib",
        target_folder: Path | None = None, rounds: int = 3, progress=lambda _m: None) -> BenchResult:
    """dd and the backup alternate `rounds` times on the same cold source (medians reported): one run of each
    is at the mercy of whatever else the shared machine does at that moment."""
    if compression not in ("zlib", "none"):
        raise InvalidInput("--compression must be zlib or none")
    if size_mib <= 0 or sparse_gib < 0 or rounds < 1:
        raise InvalidInput("--size must be > 0 MiB, --sparse-gib ≥ 0, --rounds ≥ 1")
    work = folder / "kvmkit-backup-bench"
    target = (target_folder or folder) / "kvmkit-backup-bench-target"
    for old in (work, target):
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "source.raw"
    try:
        if sparse_gib:
            data = make_sparse(src, sparse_gib, stride)
            progress(f"source: {sparse_gib} GiB sparse, 4 KiB of data every {stride} MiB")
        else:
            data = make_dense(src, size_mib)
            progress(f"source: {size_mib} MiB (each MiB half random, half text)")
        dd_runs, backup_runs = [], []
        for attempt in range(rounds):
            dd_runs.append(dd_read(src))
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            backup_runs.append(backup_child(src, target, compression))
            progress(f"round {attempt + 1}: dd {dd_runs[-1]:.2f} s, backup {backup_runs[-1][0]['seconds']:.2f} s, "
                     f"peak RSS {backup_runs[-1][1]:.0f} MiB")
        dd_s = statistics.median(dd_runs)
        stats = sorted(backup_runs, key=lambda r: r[0]["seconds"])[len(backup_runs) // 2][0]
        rss = max(r[1] for r in backup_runs)
        write_s = dd_write(target, stats["written"])
        again, again_rss = backup_child(src, target, compression, "unchanged")  # every chunk already stored
        progress(f"unchanged re-run: {again['seconds']:.2f} s, wrote {again['written']} B")
        size = src.stat().st_size
        # dd reads holes too (fast, from no disk); compare like with like: disk bytes per second of wall time
        dd_mb_s = size / dd_s / 1e6
        backup_mb_s = size / stats["seconds"] / 1e6
        return BenchResult(source=str(src), target=str(target), compression=compression, rounds=rounds,
                           size_bytes=size, data_bytes=data, dd_seconds=round(dd_s, 3), dd_mb_s=round(dd_mb_s, 1),
                           backup_seconds=stats["seconds"], backup_mb_s=round(backup_mb_s, 1),
                           ratio_vs_dd=round(backup_mb_s / dd_mb_s, 3), written_bytes=stats["written"],
                           target_write_mb_s=round(stats["written"] / write_s / 1e6, 1),
                           manifest_bytes=stats["manifest"], chunks=stats["chunks"],
                           peak_rss_mib=round(max(rss, again_rss), 1),
                           unchanged_mb_s=round(size / again["seconds"] / 1e6, 1), unchanged_written=again["written"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
