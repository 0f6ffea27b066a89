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
src, target, compression = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
snap = Snapshot(vm_uuid="bench", vm="bench", name="bench", created=datetime.now(), mode=Mode.OFFLINE,
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
    size_bytes: int
    data_bytes: int
    dd_seconds: float
    dd_mb_s: float
    backup_seconds: float
    backup_mb_s: float  # bytes the backup read / its wall time
    ratio_vs_dd: float
    written_bytes: int
    manifest_bytes: int
    chunks: int
    peak_rss_mib: float

    def rows(self) -> list[tuple[str, str]]:
        return [("disk size", f"{self.size_bytes / 2**30:.2f} GiB"),
                ("data in it", f"{self.data_bytes / 2**20:.0f} MiB"),
                ("dd read", f"{self.dd_mb_s:.0f} MB/s ({self.dd_seconds:.2f} s)"),
                ("backup read", f"{self.backup_mb_s:.0f} MB/s ({self.backup_seconds:.2f} s)"),
                ("backup / dd", f"{self.ratio_vs_dd:.2f}×"),
                ("written to target", f"{self.written_bytes / 2**20:.1f} MiB"),
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


def backup_child(src: Path, target: Path, compression: str) -> tuple[dict, float]:
    drop_cache(src)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(target), compression], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"backup child failed: {err.decode(errors='replace').strip().splitlines()[-1:]}")
    return json.loads(out), usage.ru_maxrss / 1024


def run(folder: Path, size_mib: int, sparse_gib: int = 0, stride: int = 16, compression: str = "zlib",
        target_folder: Path | None = None, progress=lambda _m: None) -> BenchResult:
    if compression not in ("zlib", "none"):
        raise InvalidInput("--compression must be zlib or none")
    if size_mib <= 0 or sparse_gib < 0:
        raise InvalidInput("--size must be > 0 MiB and --sparse-gib ≥ 0")
    work = folder / "kvmkit-backup-bench"
    target = (target_folder or folder) / "kvmkit-backup-bench-target"
    for old in (work, target):
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True)
    target.mkdir(parents=True)
    src = work / "source.raw"
    try:
        if sparse_gib:
            data = make_sparse(src, sparse_gib, stride)
            progress(f"source: {sparse_gib} GiB sparse, 4 KiB of data every {stride} MiB")
        else:
            data = make_dense(src, size_mib)
            progress(f"source: {size_mib} MiB (each MiB half random, half text)")
        dd_s = dd_read(src)
        progress(f"dd: {dd_s:.2f} s")
        stats, rss = backup_child(src, target, compression)
        progress(f"backup: {stats['seconds']:.2f} s, peak RSS {rss:.0f} MiB")
        size = src.stat().st_size
        # dd reads holes too (fast, from no disk); compare like with like: bytes each read per second of wall time
        dd_mb_s = size / dd_s / 1e6
        backup_mb_s = size / stats["seconds"] / 1e6
        return BenchResult(source=str(src), target=str(target), compression=compression, size_bytes=size,
                           data_bytes=data, dd_seconds=round(dd_s, 3),
                           dd_mb_s=round(dd_mb_s, 1), backup_seconds=stats["seconds"],
                           backup_mb_s=round(backup_mb_s, 1), ratio_vs_dd=round(backup_mb_s / dd_mb_s, 3),
                           written_bytes=stats["written"], manifest_bytes=stats["manifest"],
                           chunks=stats["chunks"], peak_rss_mib=round(rss, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
