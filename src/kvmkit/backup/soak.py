"""`kvmkit backup soak`: many hosts on one repository, with kill -9, then proof that nothing was lost.

Writers (each a process acting as its own host: KVMKIT_HOST_ID, its own state dir, its own VM) loop: change
their image (random 4 KiB writes into a copy of a shared template, so chunks dedupe across hosts), take a
snapshot file named as the file driver names it, record the snapshot's sha256, back it up. Pruners (hosts too)
loop: prune a random writer's VM to its newest 1-3 backups, or delete a random backup, each with a sweep.
The parent randomly kill -9's any of them and starts it again. Afterwards every backup whose manifest exists
is verified and restored, and its bytes compared with what was recorded before it was backed up.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from kvmkit import config
from kvmkit.config import Settings

IMAGE = 16 << 20
TEMPLATE_SEED = 23


@dataclass
class SoakResult:
    target: str
    seconds: float
    writers: int
    pruners: int
    backups: int = 0
    backup_failures: int = 0
    prunes: int = 0
    deletes: int = 0
    refusals: int = 0  # deletes refused (a dependant or a running backup's parent): expected
    kills: int = 0
    checked: int = 0  # backups verified and restored at the end
    mismatched: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.damaged and self.checked > 0


def _vm(host: str) -> tuple[str, str]:
    return host, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"kvmkit-soak-{host}"))


def _settings(state: Path) -> Settings:
    return config.load().model_copy(update={"state_dir": state})


def _count(folder: Path, what: str) -> None:
    with (folder / "counts").open("a") as fh:
        fh.write(what + "\n")


def writer(folder: Path, host: str, target: str) -> None:
    """One writer host's loop (a child process; killed at any point)."""
    from kvmkit.backup.create import backup_snapshot
    from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State

    settings, (vm, vm_uuid) = _settings(folder / "state"), _vm(host)
    image, expect = folder / "vda.raw", folder / "expect"
    expect.mkdir(exist_ok=True)
    if not image.exists():
        shutil.copyfile(folder.parent.parent / "template.raw", image)
    rng = random.Random()
    while True:
        with image.open("r+b") as fh:
            for _ in range(rng.randrange(1, 64)):
                fh.seek(rng.randrange(IMAGE // 4096) * 4096)
                fh.write(os.urandom(4096))
        name = f"soak-{time.time_ns()}"
        snap_file = Path(f"{image}@{name}.kvmkit")
        shutil.copyfile(image, snap_file)
        (expect / name).write_text(hashlib.sha256(snap_file.read_bytes()).hexdigest())
        snap = Snapshot(vm_uuid=vm_uuid, vm=vm, name=name, created=datetime.now(), mode=Mode.OFFLINE,
                        state=State.READY, disks=[DiskSnapshot(target="vda", driver="file", source=str(image),
                                                               handle=str(snap_file), size_bytes=IMAGE)])
        try:
            backup_snapshot(settings, snap, target)
            _count(folder, "backup")
        except Exception as exc:  # a backup that refuses (a parent pruned meanwhile …) is counted, not fatal
            _count(folder, f"backup-failed {type(exc).__name__}: {str(exc)[:200]}")
        for old in sorted(folder.glob("vda.raw@*.kvmkit"))[:-1]:  # keep the newest: the next one's FIEMAP base
            old.unlink(missing_ok=True)


def pruner(folder: Path, host: str, target: str, writers: list[str]) -> None:
    from kvmkit.backup import manage, restore
    from kvmkit.backup.retention import RetentionPolicy
    from kvmkit.backup.targets import open_target
    from kvmkit.errors import KvmkitError

    settings, rng = _settings(folder / "state"), random.Random()
    while True:
        time.sleep(rng.uniform(0.5, 3))
        vm = rng.choice(writers)
        try:
            if rng.random() < 0.5:
                manage.prune(settings, vm, RetentionPolicy(keep_last=rng.randrange(1, 4)), target)
                _count(folder, "prune")
            else:
                backups = restore.vm_manifests(open_target(settings, target), vm)
                manage.delete(settings, vm, rng.choice(backups).snapshot, target,
                              with_dependants=rng.random() < 0.7)
                _count(folder, "delete")
        except KvmkitError as exc:
            _count(folder, f"refused {type(exc).__name__}")


def _spawn(root: Path, role: str, host: str, target: str, writers: list[str]) -> subprocess.Popen:
    folder = root / "hosts" / host
    env = {**os.environ, "KVMKIT_HOST_ID": host}
    args = [sys.executable, "-I", "-m", "kvmkit.backup.soak", role, str(folder), host, target, ",".join(writers)]
    log = (folder / "log").open("ab")
    return subprocess.Popen(args, env=env, cwd="/", stdout=log, stderr=log, start_new_session=True)


def run(settings: Settings, target: str, root: Path, seconds: float, writers: int = 4, pruners: int = 2,
        kill_every: float = 15.0, say=lambda _m: None) -> SoakResult:
    """The soak in `root` (made; its hosts' state dirs and images live there) against the configured target."""
    from kvmkit.backup.targets import open_target

    open_target(settings, target)  # reachable, keys load: fail here, not in eight children
    root.mkdir(parents=True, exist_ok=True)
    template = root / "template.raw"
    with template.open("wb") as fh:
        fh.write(random.Random(TEMPLATE_SEED).randbytes(IMAGE))
    names = [f"soak-w{i}" for i in range(writers)]
    roles = [("writer", n) for n in names] + [("pruner", f"soak-p{i}") for i in range(pruners)]
    for _, host in roles:
        state = root / "hosts" / host / "state"
        state.mkdir(parents=True, exist_ok=True)
        keys = settings.state_dir / "backup-keys"
        if keys.is_dir():  # what `kvmkit backup key import` does on a real host
            shutil.copytree(keys, state / "backup-keys", dirs_exist_ok=True)
    procs = {host: _spawn(root, role, host, target, names) for role, host in roles}
    result = SoakResult(target=target, seconds=seconds, writers=writers, pruners=pruners)
    rng, t0 = random.Random(), time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(min(rng.expovariate(1 / kill_every), max(0.1, seconds - (time.monotonic() - t0))))
            if time.monotonic() - t0 >= seconds:
                break
            role, host = rng.choice(roles)
            os.killpg(procs[host].pid, signal.SIGKILL)
            procs[host].wait()
            result.kills += 1
            say(f"kill -9 {host}")
            procs[host] = _spawn(root, role, host, target, names)
    finally:
        for proc in procs.values():
            with _quiet():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _tally(root, result)
    say(f"{result.backups} backups, {result.prunes} prunes, {result.deletes} deletes, {result.kills} kills; checking")
    _check(settings, target, root, names, result)
    return result


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is ProcessLookupError


def _tally(root: Path, result: SoakResult) -> None:
    for counts in (root / "hosts").glob("*/counts"):
        for line in counts.read_text().splitlines():
            kind = line.split(" ", 1)[0]
            if kind == "backup":
                result.backups += 1
            elif kind == "backup-failed":
                result.backup_failures += 1
            elif kind == "prune":
                result.prunes += 1
            elif kind == "delete":
                result.deletes += 1
            elif kind == "refused":
                result.refusals += 1


def _check(settings: Settings, target: str, root: Path, writers: list[str], result: SoakResult) -> None:
    """Every backup whose manifest exists verifies and restores to the bytes recorded before it was taken."""
    from kvmkit.backup import restore
    from kvmkit.backup.targets import open_target
    from kvmkit.errors import KvmkitError

    store = open_target(settings, target)
    out = root / "restored.raw"
    for host in writers:
        vm, vm_uuid = _vm(host)
        manifests = store.manifests(vm_uuid)
        if not manifests:
            continue
        try:
            report = restore.verify(settings, vm, target_name=target)
            result.damaged += [f"{vm}: {d.chunk} {d.problem}" for d in report.damaged]
            result.mismatched += [k for k, v in report.content.items() if v == "mismatch"]
        except KvmkitError as exc:
            result.damaged.append(f"{vm}: {exc}")
            continue
        for manifest in manifests:
            expected = root / "hosts" / host / "expect" / manifest.snapshot
            out.unlink(missing_ok=True)
            try:
                restore.restore(settings, vm, manifest.snapshot, target, to=[str(out)])
            except KvmkitError as exc:
                result.damaged.append(f"{vm}/{manifest.snapshot}: {exc}")
                continue
            result.checked += 1
            if hashlib.sha256(out.read_bytes()).hexdigest() != expected.read_text().strip():
                result.mismatched.append(f"{vm}/{manifest.snapshot}")
    out.unlink(missing_ok=True)


def as_dict(result: SoakResult) -> dict:
    return asdict(result) | {"ok": result.ok}


if __name__ == "__main__":  # a child: role, folder, host, target, writers
    role, folder_arg, host_arg, target_arg, writers_arg = sys.argv[1:6]
    if role == "writer":
        writer(Path(folder_arg), host_arg, target_arg)
    else:
        pruner(Path(folder_arg), host_arg, target_arg, writers_arg.split(","))
    print(json.dumps({"exit": role}))
