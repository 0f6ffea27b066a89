"""The peer bench's parts (backup_peers.py runs them): its private loop filesystem, cache dropping, one leg as a
measured child process, and each tool's init / backup / restore. kvmkit's legs run the library in a child (the
same calls `kvmkit backup create` and `restore` make), timed inside the child too, after the target is open."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem

MiB = 1 << 20
PASSWORD = "kvmkit-bench"  # restic cannot run without one; the repository is thrown away after the run
FICLONE = 0x40049409
KVMKIT_CHILD = """
import json, sys, time
from datetime import datetime
from pathlib import Path
from kvmkit.backup import restore
from kvmkit.backup.create import Backup
from kvmkit.backup.store import DirTarget
from kvmkit.backup.targets import open_target
from kvmkit.config import BackupTarget, Settings
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State
op, repo, state, mode = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[7]
extra = {"encryption": "repokey", "passphrase_file": state.parent / "passphrase"} if mode == "enc" else {}
# the restore goes to a new file on the bench's private filesystem, which no VM can use: libvirt's test driver
# answers the "is the destination in use" check without a libvirtd
settings = Settings(state_dir=state, libvirt_uri="test:///default",
                    backup_targets=[BackupTarget(name="bench", path=repo, **extra)])
t0 = time.perf_counter()
store = open_target(settings) if mode == "enc" else DirTarget("bench", repo)  # keys unwrapped before the clock
unlock = time.perf_counter() - t0  # scrypt: once per process (keys.py caches the unwrapped keys)
if op == "backup":
    snap, name, created = Path(sys.argv[4]), sys.argv[5], datetime.fromisoformat(sys.argv[6])
    record = Snapshot(vm_uuid="00000000-0000-4000-8000-0000000b3c40", vm="bench", name=name, created=created,
                      mode=Mode.OFFLINE, state=State.READY,
                      disks=[DiskSnapshot(target="vda", driver="file", source=str(snap).rsplit("@", 1)[0],
                                          handle=str(snap), size_bytes=snap.stat().st_size)])
    t0 = time.perf_counter()
    m = Backup(settings, store, "zstd", lambda _n: None).run(record)
    print(json.dumps({"read": m.read_bytes, "written": m.written_bytes, "method": m.disks[0].change_method,
                      "seconds": time.perf_counter() - t0, "unlock": unlock}))
else:
    t0 = time.perf_counter()
    restore.restore(settings, "bench", sys.argv[4], to=[f"vda={sys.argv[5]}"])
    print(json.dumps({"seconds": time.perf_counter() - t0, "unlock": unlock}))
"""


class Leg(BaseModel):
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    read_bytes: int  # from the block device (ru_inblock × 512)


# the filesystem and caches ---------------------------------------------------------------------------------------
def _run(cmd: list[str], what: str, env: dict | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise EnvironmentProblem(f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout


class LoopXfs:
    """A private XFS with reflink on a sparse image, through a direct-I/O loop device; removed on exit."""

    def __init__(self, folder: Path, size_gib: int) -> None:
        if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
            raise EnvironmentProblem("the peer bench needs root and mkfs.xfs (it makes a private XFS loop filesystem)")
        self.work = Path(tempfile.mkdtemp(prefix="kvmkit-peers-", dir=folder))
        self.image, self.mnt, self.loop = self.work / "fs.img", self.work / "mnt", ""
        with self.image.open("wb") as fh:
            fh.truncate(size_gib << 30)

    def __enter__(self) -> Path:
        try:
            _run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(self.image)], "mkfs.xfs")
            self.loop = _run(["losetup", "--find", "--show", "--direct-io=on", str(self.image)], "losetup").strip()
            self.mnt.mkdir()
            _run(["mount", "-t", "xfs", self.loop, str(self.mnt)], "mount")
        except BaseException:
            self.__exit__()
            raise
        return self.mnt

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], capture_output=True)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def drop_caches(*paths: Path) -> None:
    """fsync + DONTNEED every file under the paths (the loop device has direct I/O: the next read is real)."""
    for top in paths:
        files = [top] if top.is_file() else [Path(d) / f for d, _, names in os.walk(top) for f in names]
        for file in files:
            try:
                fd = os.open(file, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def leg(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[Leg, str]:
    """Run one leg as a child: its wall time, CPU, peak RSS and block-device reads (wait4), and its stdout.
    Output goes to unnamed temporary files, so the child is reaped by wait4 alone (its rusage is then ours)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise EnvironmentProblem(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} failed: {tail}")
        text = out.read().decode(errors="replace")
    return Leg(seconds=round(seconds, 3), cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
               peak_rss_mib=round(usage.ru_maxrss / 1024, 1), read_bytes=usage.ru_inblock * 512), text


def tree_bytes(path: Path) -> int:
    """Allocated bytes of a repository (st_blocks: what it costs on the disk)."""
    return sum(os.lstat(Path(d) / f).st_blocks * 512 for d, _, names in os.walk(path) for f in names)


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def clone(src: Path, dst: Path) -> None:
    import fcntl

    with src.open("rb") as a, dst.open("wb") as b:
        fcntl.ioctl(b.fileno(), FICLONE, a.fileno())


# the tools ------------------------------------------------------------------------------------------------------
class Tool:
    name = ""

    def __init__(self, root: Path, source: Path) -> None:
        self.root, self.source = root / self.name, source
        self.repo = self.root / "repo"
        self.root.mkdir()

    def version(self) -> str:
        raise NotImplementedError

    def init(self) -> None:
        raise NotImplementedError

    def backup(self, label: str) -> tuple[Leg, dict]:
        raise NotImplementedError

    def restore(self, dest: Path) -> tuple[Leg, Path]:
        """Restore the newest backup under dest; (leg, path of the restored image)."""
        raise NotImplementedError


class Kvmkit(Tool):
    """Backs up reflink snapshots of the image, as `kvmkit snapshot` + `kvmkit backup create` would."""

    name = "kvmkit"
    mode = "clear"

    def __init__(self, root: Path, source: Path) -> None:
        super().__init__(root, source)
        self.snaps, self.state, self.last = self.root / "snapshots", self.root / "state", ""
        self.restored: dict = {}
        self.snaps.mkdir()
        self.repo.mkdir()
        if self.mode == "enc":
            secret = self.root / "passphrase"
            secret.write_text(PASSWORD + "\n")
            secret.chmod(0o600)

    def version(self) -> str:
        from importlib.metadata import version

        return version("kvmkit")

    def init(self) -> None:
        return None

    def backup(self, label: str) -> tuple[Leg, dict]:
        snap = self.snaps / f"{self.source.name}@{label}.kvmkit"
        clone(self.source, snap)
        drop_caches(snap)
        created = datetime.now().isoformat()
        result, out = leg([sys.executable, "-I", "-c", KVMKIT_CHILD, "backup", str(self.repo), str(self.state),
                           str(snap), label, created, self.mode])
        self.last = label
        return result, json.loads(out)

    def restore(self, dest: Path) -> tuple[Leg, Path]:
        path = dest / "disk.raw"
        result, out = leg([sys.executable, "-I", "-c", KVMKIT_CHILD, "restore", str(self.repo), str(self.state),
                           self.last, str(path), "-", self.mode])
        self.restored = json.loads(out)
        return result, path


class KvmkitEncrypted(Kvmkit):
    """The same, into a repokey repository: AES-256-GCM-sealed chunks and manifests, keyed chunk names."""

    name = "kvmkit-enc"
    mode = "enc"


class Restic(Tool):
    name = "restic"

    def env(self) -> dict:
        return {**os.environ, "RESTIC_REPOSITORY": str(self.repo), "RESTIC_PASSWORD": PASSWORD,
                "RESTIC_CACHE_DIR": str(self.root / "cache"), "HOME": str(self.root)}

    def version(self) -> str:
        return _run(["restic", "version"], "restic version").split()[1]

    def init(self) -> None:
        _run(["restic", "init", "--repository-version", "2"], "restic init", self.env())

    def backup(self, label: str) -> tuple[Leg, dict]:
        return leg(["restic", "backup", "--quiet", "--compression", "auto", "--host", "bench", "--tag", label,
                    str(self.source)], self.env())[0], {}

    def restore(self, dest: Path) -> tuple[Leg, Path]:
        result, _ = leg(["restic", "restore", "latest", "--target", str(dest)], self.env())
        return result, dest / self.source.relative_to("/")


class Borg(Tool):
    name = "borg"

    def env(self) -> dict:
        return {**os.environ, "BORG_BASE_DIR": str(self.root / "home"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def version(self) -> str:
        return _run(["borg", "--version"], "borg --version").split()[-1]

    def init(self) -> None:
        _run(["borg", "init", "-e", "none", str(self.repo)], "borg init", self.env())

    def backup(self, label: str) -> tuple[Leg, dict]:
        self.last = label
        return leg(["borg", "create", "--compression", "zstd,1", f"{self.repo}::{label}", str(self.source)],
                   self.env())[0], {}

    def restore(self, dest: Path) -> tuple[Leg, Path]:
        dest.mkdir(exist_ok=True)
        result, _ = leg(["borg", "extract", "--sparse", f"{self.repo}::{self.last}"], self.env(), cwd=dest)
        return result, dest / self.source.relative_to("/")


TOOLS: dict[str, type[Tool]] = {"kvmkit": Kvmkit, "kvmkit-enc": KvmkitEncrypted, "restic": Restic, "borg": Borg}
