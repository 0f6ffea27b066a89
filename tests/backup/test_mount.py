"""`kvmkit backup mount`: a backup's disks as read-only files, chunks fetched lazily; a loop mount of one pulls a
single file out; unmount, or killing either process, leaves nothing mounted."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.mount import ChunkCache, images, is_mounted, read_range
from kvmkit.backup.targets import open_target
from tests.backup.conftest import MiB, file_snapshot, randbytes, sparse_file

KVMKIT = [str(Path(sys.executable).parent / "kvmkit")]


def test_reads_anywhere_match_the_disk_with_a_bounded_cache(tmp_path, settings):
    disk = sparse_file(tmp_path / "vda", 10 * MiB + 12345, [(0, randbytes(3 * MiB)), (5 * MiB - 7, randbytes(MiB)),
                                                              (10 * MiB, randbytes(12345))])
    backup_snapshot(settings, file_snapshot("s1", {"vda": disk}))
    store = open_target(settings)
    [image] = images(store, "vm1", "s1")
    cache = ChunkCache(store, capacity=2)
    data, rng = disk.read_bytes(), random.Random(3)
    assert (image.name, image.size) == ("vda.raw", len(data))
    for _ in range(60):
        offset, size = rng.randrange(len(data) + 10), rng.randrange(1, 3 * MiB)
        assert read_range(image, cache, offset, size) == data[offset: offset + size]
        assert len(cache.held) <= 2


def ext4_image(path: Path, files: dict[str, bytes], mnt: Path) -> None:
    with path.open("wb") as fh:
        fh.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(path), str(mnt)], check=True)
    try:
        for name, data in files.items():
            (mnt / name).write_bytes(data)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def config_file(tmp_path: Path, settings) -> dict:
    conf = tmp_path / "config.toml"
    conf.write_text(f'state_dir = "{settings.state_dir}"\n[[backup_targets]]\nname = "t1"\n'
                    f'path = "{settings.backup_targets[0].path}"\n')
    return {**os.environ, "KVMKIT_CONFIG": str(conf)}


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def start_mount(env: dict, mountpoint: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*KVMKIT, "backup", "mount", "vm1", "s1", str(mountpoint)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: is_mounted(mountpoint) or proc.poll() is not None), "mount never appeared"
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


@pytest.mark.lab  # FUSE and loop mounts (root); no VM
def test_a_file_comes_out_of_a_mounted_backup_and_unmount_or_kill_leaves_nothing(tmp_path, settings):
    (tmp_path / "scratch").mkdir()
    wanted = randbytes(3 * MiB + 17)
    image = tmp_path / "vda.img"
    ext4_image(image, {"wanted.bin": wanted, "other.txt": b"hello\n" * 1000}, tmp_path / "scratch")
    backup_snapshot(settings, file_snapshot("s1", {"vda": image}))
    env, mnt, inner = config_file(tmp_path, settings), tmp_path / "m", tmp_path / "inner"
    mnt.mkdir()
    inner.mkdir()

    proc = start_mount(env, mnt)
    assert sorted(p.name for p in mnt.iterdir()) == ["vda.raw"]
    assert (mnt / "vda.raw").stat().st_size == image.stat().st_size
    with pytest.raises(OSError):
        (mnt / "vda.raw").open("r+b")  # read-only
    subprocess.run(["mount", "-o", "ro,loop,noload", str(mnt / "vda.raw"), str(inner)], check=True)
    try:
        got = hashlib.sha256((inner / "wanted.bin").read_bytes()).hexdigest()
    finally:
        subprocess.run(["umount", str(inner)], check=True)
    assert got == hashlib.sha256(wanted).hexdigest()
    subprocess.run(["umount", str(mnt)], check=True)
    assert proc.wait(timeout=20) == 0 and not is_mounted(mnt) and not any(mnt.iterdir())

    for victim in ("supervisor", "server"):
        proc = start_mount(env, mnt)
        server = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
        os.kill(proc.pid if victim == "supervisor" else server, signal.SIGKILL)
        assert wait_for(lambda: not is_mounted(mnt)), f"kill -9 of the {victim} left the mount behind"
        proc.wait(timeout=20)
        assert wait_for(lambda s=server: not Path(f"/proc/{s}").exists() or
                        Path(f"/proc/{s}/stat").read_text().split()[2] == "Z")
        assert not any(mnt.iterdir())
