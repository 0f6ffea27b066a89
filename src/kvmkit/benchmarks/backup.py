"""`kvmkit backup bench`: a full backup's throughput against what the same machine does with the same source in
the same run, with the backup's peak RSS (wait4 on its own child process, so the bench's memory is not counted).

Every round runs four legs, each on a source whose page cache was just dropped (posix_fadvise DONTNEED):

    dd read          dd if=SOURCE of=/dev/null bs=4M                   the issue's anchor
    backup           a full backup into a fresh folder on the target
    dd copy          dd if=SOURCE of=TARGET/copy bs=4M conv=fsync   a plain copy to the same target: what the
                     target disk allows at all (--sparse-gib: `cp --sparse=always` + fsync instead, which copies
                     only the data extents; dd would write gigabytes of zeros, or seek 4 KiB at a time)
    backup on tmpfs  the same backup into a tmpfs (/dev/shm): the pipeline's own speed — read, sha256, compress,
                     store — without the target disk's limit

The legs alternate round after round and medians are reported, so whatever else the shared machine does at a
moment lands on all of them. A backup's time is taken inside its child around `Backup.run`, the final syncfs of
the target included (dd's fsync is in dd's time too) and the interpreter's start excluded; its CPU time (all
threads, user + sys) is reported beside it, with sha256's own speed on one core: on a small machine those two
say how far hashing alone lets the backup go, whatever the disks do.

Each round backs up into its own folder on the target and all of them are removed at the end: an ext4 without
a journal (this machine's root filesystem) skips, one by one on every new file, the inodes deleted in the last
few minutes, so deleting a thousand chunk files before the next round would slow it down (measured: 29 % of the
backup's CPU in ext4's inode search) — a cost no real backup pays. For the same reason leave ~5 minutes between
two benches on such a target. "Cold" is cold for this kernel only: in a VM whose disk the host caches, dd and
the backup both read from the host's page cache, which is the same for both.

`--sparse-gib N` makes an N GiB sparse disk with 4 KiB of unique data in every `stride`-th chunk instead, to show
that memory stays flat on a large disk: the backup reads only the chunks that hold data and keeps at most
2 × workers chunks in flight; what grows with the disk is only the manifest's chunk list.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from kvmkit.backup import codec
from kvmkit.backup.create import WORKERS
from kvmkit.backup.model import DEFAULT_CHUNK_SIZE
from kvmkit.errors import EnvironmentProblem, InvalidInput

TMPFS = Path("/dev/shm")
CHILD = """
import json, sys, time
from datetime import datetime
from pathlib import Path
from kvmkit.backup.create import Backup
from kvmkit.backup.store import DirTarget
from kvmkit.config import Settings
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State
src, target, compression, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
snap = Snapshot(vm_uuid="00000000-0000-4000-8000-00000000bec4", vm="bench", name=name, created=datetime.now(),
                mode=Mode.OFFLINE,
                state=State.READY, disks=[DiskSnapshot(target="vda", driver="file", source=str(src),
                handle=str(src), size_bytes=src.stat().st_size)])
store = DirTarget("bench", target)
t0, c0 = time.perf_counter(), time.process_time()
m = Backup(Settings(state_dir=target / "state"), store, compression, lambda _n: None).run(snap)  # index: here
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "cpu": cpu, "read": m.read_bytes, "written": m.written_bytes,
                  "chunks": len(m.disks[0].chunks), "manifest": m.manifest_bytes, "rss_mib": hwm / 1024}))
"""


class BenchRound(BaseModel):
    dd_seconds: float
    backup_seconds: float
    backup_cpu_seconds: float
    dd_copy_seconds: float
    tmpfs_backup_seconds: float
    tmpfs_backup_cpu_seconds: float
    sha256_mb_s: float
    peak_rss_mib: float


class BenchResult(BaseModel):
    source: str
    target: str
    tmpfs_target: str
    compression: str
    workers: int
    rounds: int
    size_bytes: int
    data_bytes: int
    dd_seconds: float  # dd read of the source (median)
    dd_mb_s: float
    backup_seconds: float  # backup onto the target, final syncfs included (median)
    backup_mb_s: float  # disk bytes / wall time, as for dd
    ratio_vs_dd: float
    dd_copy_seconds: float  # plain copy of the source onto the target, fsync'd (median)
    copy_command: str  # that copy: dd, or cp --sparse=always for a sparse source
    dd_copy_mb_s: float
    ratio_vs_dd_copy: float  # backup / dd copy: how close the backup gets to what the target allows
    tmpfs_backup_seconds: float  # backup onto tmpfs (median)
    tmpfs_backup_mb_s: float
    tmpfs_ratio_vs_dd: float  # the pipeline's own speed vs dd read
    backup_cpu_seconds: float  # user + sys of all the backup's threads, target on disk (median)
    tmpfs_backup_cpu_seconds: float
    sha256_mb_s: float  # hashlib.sha256 on one core, in memory, measured in every round (median)
    cores: int
    written_bytes: int
    target_write_mb_s: float  # what the target took in the dd copy, fsync'd (= dd_copy_mb_s for a dense source)
    unchanged_mb_s: float  # a second backup of the same source: read + hash only, every chunk already stored
    unchanged_written: int
    manifest_bytes: int
    chunks: int
    peak_rss_mib: float
    rounds_detail: list[BenchRound]

    def rows(self) -> list[tuple[str, str]]:
        return [("disk size", f"{self.size_bytes / 2**30:.2f} GiB"),
                ("data in it", f"{self.data_bytes / 2**20:.0f} MiB"),
                ("dd read", f"{self.dd_mb_s:.0f} MB/s ({self.dd_seconds:.2f} s)"),
                ("backup → target", f"{self.backup_mb_s:.0f} MB/s ({self.backup_seconds:.2f} s) = "
                                    f"{self.ratio_vs_dd:.2f}× dd read"),
                ("copy → target", f"{self.dd_copy_mb_s:.0f} MB/s ({self.dd_copy_seconds:.2f} s, {self.copy_command}); "
                                  f"backup = {self.ratio_vs_dd_copy:.2f}× it"),
                ("backup → tmpfs", f"{self.tmpfs_backup_mb_s:.0f} MB/s ({self.tmpfs_backup_seconds:.2f} s) = "
                                   f"{self.tmpfs_ratio_vs_dd:.2f}× dd read"),
                ("backup CPU", f"{self.backup_cpu_seconds:.2f} s → target, {self.tmpfs_backup_cpu_seconds:.2f} s → "
                               f"tmpfs (user + sys, {self.workers} worker threads)"),
                ("sha256 alone", f"{self.sha256_mb_s:.0f} MB/s per core × {self.cores} cores = "
                                 f"{self.sha256_mb_s * self.cores:.0f} MB/s at best"),
                ("written to target", f"{self.written_bytes / 2**20:.1f} MiB"),
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


def _dd(*args: str) -> float:
    if shutil.which("dd") is None:
        raise EnvironmentProblem("dd is not installed")
    t0 = time.perf_counter()
    subprocess.run(["dd", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def dd_read(path: Path) -> float:
    drop_cache(path)
    return _dd(f"if={path}", "of=/dev/null", "bs=4M")


def dd_copy(path: Path, folder: Path, sparse: bool = False) -> float:
    """A plain copy of the source onto the target, fsync'd: the target disk's own bound, same bytes, same run.
    sparse: `cp --sparse=always` (data extents only), then fsync, timed together."""
    copy = folder / "dd-copy.raw"
    drop_cache(path)
    os.sync()  # start from a clean target, as the backup legs do
    try:
        if not sparse:
            return _dd(f"if={path}", f"of={copy}", "bs=4M", "conv=fsync")
        t0 = time.perf_counter()
        subprocess.run(["cp", "--sparse=always", "--reflink=never", str(path), str(copy)], check=True,
                       capture_output=True)
        fd = os.open(copy, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.perf_counter() - t0
    finally:
        copy.unlink(missing_ok=True)


def backup_child(src: Path, target: Path, compression: str, name: str = "full") -> tuple[dict, float]:
    """One backup in its own process: (its figures, its peak RSS in MiB). The peak is the child's own VmHWM:
    wait4's ru_maxrss survives execve, so it reports the bench's own peak whenever that is the larger (measured:
    a 13 MiB child of a 300 MiB parent is reported as 313 MiB)."""
    drop_cache(src)
    os.sync()
    proc = subprocess.Popen([sys.executable, "-I", "-c", CHILD, str(src), str(target), compression, name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, _usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"backup child failed: {err.decode(errors='replace').strip().splitlines()[-1:]}")
    figures = json.loads(out)
    return figures, figures.pop("rss_mib")


def sha256_speed(seconds: float = 0.2) -> float:
    """MB/s of hashlib.sha256 on one core over an in-memory chunk (the backup's unavoidable cost per byte)."""
    data, hashed = os.urandom(DEFAULT_CHUNK_SIZE), 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        hashlib.sha256(data).digest()
        hashed += len(data)
    return hashed / (time.perf_counter() - t0) / 1e6


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run(folder: Path, size_mib: int, sparse_gib: int = 0, stride: int = 16, compression: str = "zstd",
        target_folder: Path | None = None, rounds: int = 3, progress=lambda _m: None,
        tmpfs_folder: Path = TMPFS) -> BenchResult:
    if compression not in codec.COMPRESSIONS:
        raise InvalidInput(f"--compression must be one of {', '.join(codec.COMPRESSIONS)}")
    if size_mib <= 0 or sparse_gib < 0 or rounds < 1:
        raise InvalidInput("--size must be > 0 MiB, --sparse-gib ≥ 0, --rounds ≥ 1")
    if not tmpfs_folder.is_dir():
        raise EnvironmentProblem(f"the tmpfs leg needs {tmpfs_folder} (a tmpfs) to exist")
    work = folder / "kvmkit-backup-bench"
    target = (target_folder or folder) / "kvmkit-backup-bench-target"
    tmpfs = tmpfs_folder / f"kvmkit-backup-bench-{os.getpid()}"
    for old in (work, target, tmpfs):
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
        if shutil.disk_usage(tmpfs_folder).free < data * 1.05 + (64 << 20):
            raise EnvironmentProblem(f"{tmpfs_folder} has less free space than the backup would write there")
        details: list[BenchRound] = []
        for attempt in range(rounds):
            dd_s = dd_read(src)
            disk, disk_rss = backup_child(src, _fresh(target / f"round-{attempt + 1}"), compression)
            copy_s = dd_copy(src, target, sparse=bool(sparse_gib))
            tmp, tmp_rss = backup_child(src, _fresh(tmpfs), compression)
            shutil.rmtree(tmpfs, ignore_errors=True)  # tmpfs is memory; and unlike ext4 it reuses inodes freely
            details.append(BenchRound(dd_seconds=round(dd_s, 3), backup_seconds=round(disk["seconds"], 3),
                                      backup_cpu_seconds=round(disk["cpu"], 3), dd_copy_seconds=round(copy_s, 3),
                                      tmpfs_backup_seconds=round(tmp["seconds"], 3),
                                      tmpfs_backup_cpu_seconds=round(tmp["cpu"], 3),
                                      sha256_mb_s=round(sha256_speed(), 1),
                                      peak_rss_mib=round(max(disk_rss, tmp_rss), 1)))
            progress(f"round {attempt + 1}: dd read {dd_s:.2f} s, backup {disk['seconds']:.2f} s, "
                     f"dd copy {copy_s:.2f} s, backup on tmpfs {tmp['seconds']:.2f} s, "
                     f"peak RSS {details[-1].peak_rss_mib:.0f} MiB")
        again, again_rss = backup_child(src, target / f"round-{rounds}", compression, "unchanged")
        progress(f"unchanged re-run: {again['seconds']:.2f} s, wrote {again['written']} B")
        return _result(src, target, tmpfs, compression, data, bool(sparse_gib), details, disk, again, again_rss)
    finally:
        for path in (work, target, tmpfs):
            shutil.rmtree(path, ignore_errors=True)


def _result(src: Path, target: Path, tmpfs: Path, compression: str, data: int, sparse: bool,
            details: list[BenchRound], disk: dict, again: dict, again_rss: float) -> BenchResult:
    """Medians of the rounds; what does not vary between rounds (bytes written, chunks) from the last one."""
    def median(field: str) -> float:
        return statistics.median(getattr(r, field) for r in details)

    size = src.stat().st_size
    # dd reads holes too (fast, from no disk); compare like with like: disk bytes per second of wall time
    dd_s, copy_s, backup_s, tmpfs_s = (median(f) for f in ("dd_seconds", "dd_copy_seconds", "backup_seconds",
                                                              "tmpfs_backup_seconds"))
    dd_mb_s, copy_mb_s, backup_mb_s, tmpfs_mb_s = (size / s / 1e6 for s in (dd_s, copy_s, backup_s, tmpfs_s))
    return BenchResult(
        source=str(src), target=str(target), tmpfs_target=str(tmpfs), compression=compression, workers=WORKERS,
        rounds=len(details), size_bytes=size, data_bytes=data,
        dd_seconds=round(dd_s, 3), dd_mb_s=round(dd_mb_s, 1),
        backup_seconds=round(backup_s, 3), backup_mb_s=round(backup_mb_s, 1),
        ratio_vs_dd=round(backup_mb_s / dd_mb_s, 3),
        dd_copy_seconds=round(copy_s, 3), dd_copy_mb_s=round(copy_mb_s, 1),
        copy_command="cp --sparse=always + fsync" if sparse else "dd bs=4M conv=fsync",
        ratio_vs_dd_copy=round(backup_mb_s / copy_mb_s, 3),
        tmpfs_backup_seconds=round(tmpfs_s, 3), tmpfs_backup_mb_s=round(tmpfs_mb_s, 1),
        tmpfs_ratio_vs_dd=round(tmpfs_mb_s / dd_mb_s, 3),
        backup_cpu_seconds=round(median("backup_cpu_seconds"), 3),
        tmpfs_backup_cpu_seconds=round(median("tmpfs_backup_cpu_seconds"), 3),
        sha256_mb_s=round(median("sha256_mb_s"), 1), cores=len(os.sched_getaffinity(0)),
        written_bytes=disk["written"], target_write_mb_s=round(data / copy_s / 1e6, 1),
        manifest_bytes=disk["manifest"], chunks=disk["chunks"],
        peak_rss_mib=round(max(again_rss, *(r.peak_rss_mib for r in details)), 1),
        unchanged_mb_s=round(size / again["seconds"] / 1e6, 1), unchanged_written=again["written"],
        rounds_detail=details)
