"""Restore at disk speed (issue 16 item 3), measured against an anchor in the same run.

    python -m kvmkit.benchmarks.restore_speed [--size-mib 1024] [--dir /var/tmp] [--rounds 3] [--json]

Builds a disk image like issue 16's (40 % holes, 30 % log-like text, 30 % random, in 1 MiB runs), backs it up
(full), rewrites 2 % of it in scattered 4 KiB blocks and backs it up again (an incremental: its changed chunks are
deltas on the full backup's, so restoring it decodes delta chains), then alternates, round after round:

    anchor   cp --sparse=always SOURCE DEST + fsync: copying the same image, holes kept, on the same filesystem
    restore  kvmkit restore of the incremental into DEST, in its own child process (peak RSS by wait4)

and prints the medians, restore/anchor, the restored file's allocated bytes against the source's (as sparse as
the source?), the chunk reads per distinct chunk (each decoded once?) and the restore's peak RSS (the child's own
VmHWM: getrusage's ru_maxrss is kept across execve, so a child of a large parent would report the parent's). The
page cache of the source (anchor) and of the repository (restore) is dropped before each leg.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

MiB = 1 << 20
CHILD = """
import json, sys, time
from pathlib import Path
from kvmkit.backup import restore
from kvmkit.backup.store import ChunkStore
from kvmkit.config import BackupTarget, Settings
repo, dest = Path(sys.argv[1]), Path(sys.argv[2])
reads = []
original = ChunkStore.read_chunk
def counting(self, digest, *args, **kwargs):
    reads.append(digest)
    return original(self, digest, *args, **kwargs)
ChunkStore.read_chunk = counting
settings = Settings(state_dir=repo.parent / "state", libvirt_uri="test:///default",
                    backup_targets=[BackupTarget(name="bench", path=repo)])
t0 = time.perf_counter()
restore.restore(settings, "bench", "s2", to=[str(dest)])
seconds = time.perf_counter() - t0
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "reads": len(reads), "distinct": len(set(reads)), "rss_mib": hwm / 1024}))
"""


def drop_cache(path: Path) -> None:
    for folder, _, files in os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]:
        for name in files:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def make_image(path: Path, size_mib: int, seed: int = 15) -> None:
    rng = random.Random(seed)
    text = b"".join(f"2026-12-03T10:{i % 60:02d}:{i % 59:02d} host kvm: vcpu {i % 8} exit reason {i % 17}\n".encode()
                    for i in range(60000))
    with path.open("wb") as fh:
        fh.truncate(size_mib * MiB)
        for index in range(size_mib):
            kind = rng.random()
            if kind < 0.4:
                continue  # a hole
            fh.seek(index * MiB)
            if kind < 0.7:
                start = rng.randrange(0, len(text) - MiB)
                fh.write(text[start: start + MiB])
            else:
                fh.write(os.urandom(MiB))


def scatter_writes(path: Path, share: float, seed: int = 16) -> None:
    rng = random.Random(seed)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        for _ in range(int(size * share / 4096)):
            fh.seek(rng.randrange(0, size // 4096) * 4096)
            fh.write(os.urandom(4096))


def run(folder: Path, size_mib: int, rounds: int) -> dict:
    from kvmkit.backup.create import backup_snapshot
    from kvmkit.config import BackupTarget, Settings
    from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State

    work = Path(tempfile.mkdtemp(prefix="kvmkit-restore-bench-", dir=folder))
    try:
        repo = work / "repo"
        repo.mkdir()
        settings = Settings(state_dir=work / "state", backup_targets=[BackupTarget(name="bench", path=repo)])
        source = work / "source.raw"
        make_image(source, size_mib)
        vm_uuid = str(uuid.uuid4())
        created = datetime.now() - timedelta(hours=2)
        for name, when in (("s1", created), ("s2", created + timedelta(hours=1))):
            if name == "s2":
                scatter_writes(source, 0.02)
            disk = DiskSnapshot(target="vda", driver="file", source=str(work / "vm.raw"), handle=str(source),
                                size_bytes=source.stat().st_size)
            backup_snapshot(settings, Snapshot(vm_uuid=vm_uuid, vm="bench", name=name, created=when,
                                               mode=Mode.OFFLINE, state=State.READY, disks=[disk]))
        anchors, restores, rss, child = [], [], [], {}
        for _ in range(rounds):
            copy = work / "copy.raw"
            drop_cache(source)
            t0 = time.perf_counter()
            subprocess.run(["cp", "--sparse=always", str(source), str(copy)], check=True)
            fd = os.open(copy, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            anchors.append(time.perf_counter() - t0)
            copy.unlink()
            dest = work / "restored.raw"
            drop_cache(repo)
            proc = subprocess.Popen([sys.executable, "-I", "-c", CHILD, str(repo), str(dest)], stdout=subprocess.PIPE)
            out = proc.stdout.read() if proc.stdout else b""
            _, status, _usage = os.wait4(proc.pid, 0)  # not its ru_maxrss: that survives execve (the parent's)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit("restore child failed")
            child = json.loads(out)
            restores.append(child["seconds"])
            rss.append(child["rss_mib"])
            same = subprocess.run(["cmp", "-s", str(source), str(dest)]).returncode == 0
            allocated, source_allocated = dest.stat().st_blocks * 512, source.stat().st_blocks * 512
            dest.unlink()
        anchor, restored = statistics.median(anchors), statistics.median(restores)
        return {"size_mib": size_mib, "rounds": rounds, "folder": str(folder), "anchor_cp_sparse_s": round(anchor, 3),
                "restore_s": round(restored, 3), "restore_over_anchor": round(restored / anchor, 2),
                "identical": same, "restored_allocated_bytes": allocated, "source_allocated_bytes": source_allocated,
                "chunk_reads": child["reads"], "distinct_chunks": child["distinct"],
                "peak_rss_mib": round(max(rss), 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 16 <= args.size_mib <= 1 << 20 or not 1 <= args.rounds <= 20 or not args.dir.is_dir():
        raise SystemExit("--size-mib 16..1048576, --rounds 1..20, --dir an existing folder")
    result = run(args.dir, args.size_mib, args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['size_mib']} MiB image (40 % holes, 30 % text, 30 % random; incremental after 2 % scattered "
          f"4 KiB writes), {result['folder']}, medians of {result['rounds']}")
    print(f"anchor cp --sparse=always + fsync  {result['anchor_cp_sparse_s']:.3f} s")
    print(f"kvmkit restore                     {result['restore_s']:.3f} s   = {result['restore_over_anchor']}× the "
          "anchor")
    print(f"identical: {result['identical']}; allocated {result['restored_allocated_bytes']} B restored vs "
          f"{result['source_allocated_bytes']} B source; {result['chunk_reads']} chunk reads for "
          f"{result['distinct_chunks']} distinct chunks; peak RSS {result['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
