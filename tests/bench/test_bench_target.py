"""Target safety: what may be written, and the one clear error (with nothing written) when not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.probe import TargetProbe
from kvmkit.bench.runner import HostRunner
from kvmkit.bench.target import plan_target
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, NotFound

MIB, GIB = 1024**2, 1024**3
SHORT = BenchOptions(size_bytes=64 * MIB, runtime_s=1, ramp_s=0)


def _probe(**kw) -> TargetProbe:
    base = {"path": "/srv/t.dat", "kind": "missing", "free_bytes": 100 * GIB, "direct_io": True, "ram_bytes": GIB}
    return TargetProbe(**{**base, **kw})


def test_new_file_defaults_to_twice_ram_and_needs_a_fill():
    plan = plan_target(_probe(), None, None)
    assert plan.size_bytes == 2 * GIB and plan.create and plan.needs_fill and not plan.warnings


def test_small_working_set_is_allowed_with_a_loud_warning():
    plan = plan_target(_probe(), 64 * MIB, None)
    assert any("SMALLER THAN 2 × RAM" in w for w in plan.warnings)


def test_file_kvmkit_filled_before_needs_no_new_fill():
    plan = plan_target(_probe(kind="file", size_bytes=64 * MIB, owned=True, filled_bytes=64 * MIB), 64 * MIB, None)
    assert not plan.create and not plan.needs_fill


@pytest.mark.parametrize(
    ("probe", "destructive", "error", "words"),
    [
        (_probe(parent_exists=False), None, NotFound, "does not exist"),
        (_probe(kind="dir"), None, InvalidInput, "directory"),
        (_probe(kind="file", size_bytes=GIB, owned=False), None, Conflict, "--destructive /srv/t.dat"),
        (_probe(kind="file", size_bytes=GIB, owned=False), "/srv/other.dat", InvalidInput, "exactly"),
        (_probe(free_bytes=10 * MIB), None, InvalidInput, "too little space"),
        (_probe(direct_io=False, filesystem="fuse"), None, InvalidInput, "O_DIRECT"),
        (_probe(filesystem="tmpfs"), None, InvalidInput, "RAM"),
        (_probe(path="/dev/vdb", kind="block", size_bytes=GIB, signature="xfs"), None, Conflict, "holds xfs"),
        (_probe(path="/dev/vdb", kind="block", size_bytes=GIB), None, Conflict, "--destructive /dev/vdb"),
        (_probe(path="/dev/vdb", kind="block", size_bytes=GIB, mounted_at="/srv"), "/dev/vdb", Conflict, "mounted"),
    ],
)
def test_unsafe_or_impossible_targets_are_refused(probe, destructive, error, words):
    with pytest.raises(error, match=words) as caught:
        plan_target(probe, 256 * MIB if probe.kind != "block" else None, destructive)
    assert "\n" not in str(caught.value)


def test_block_device_with_destructive_uses_the_whole_device():
    plan = plan_target(_probe(path="/dev/vdb", kind="block", size_bytes=GIB, signature="ext4"), None, "/dev/vdb")
    assert plan.kind == "block" and plan.size_bytes == GIB and plan.destructive and plan.needs_fill


# --- the same rules through a real probe and run_suite: nothing may be written when refused ---------------


def test_file_with_foreign_data_is_left_untouched(disk_dir: Path):
    precious = disk_dir / "precious.img"
    precious.write_bytes(b"customer data" * 1000)
    before = precious.read_bytes()
    with pytest.raises(Conflict, match="--destructive"):
        run_suite("quick", str(precious), HostRunner(), SHORT)
    assert precious.read_bytes() == before
    assert sorted(p.name for p in disk_dir.iterdir()) == ["precious.img"]


def test_missing_folder_and_too_little_space_write_nothing(disk_dir: Path):
    with pytest.raises(NotFound):
        run_suite("quick", str(disk_dir / "no" / "such.dat"), HostRunner(), SHORT)
    huge = BenchOptions(size_bytes=2**60, runtime_s=1, ramp_s=0)
    with pytest.raises(InvalidInput, match="too little space"):
        run_suite("quick", str(disk_dir / "t.dat"), HostRunner(), huge)
    assert list(disk_dir.iterdir()) == []


def test_fio_missing_or_too_old_is_an_environment_problem(disk_dir: Path, tmp_path: Path):
    with pytest.raises(EnvironmentProblem, match="not found"):
        run_suite("quick", str(disk_dir / "t.dat"), HostRunner(), BenchOptions(fio="/nonexistent/fio"))
    old = tmp_path / "fio"
    old.write_text("#!/bin/sh\necho fio-2.2\n")
    old.chmod(0o755)
    with pytest.raises(EnvironmentProblem, match="too old"):
        run_suite("quick", str(disk_dir / "t.dat"), HostRunner(), BenchOptions(fio=str(old)))
    assert list(disk_dir.iterdir()) == []


@pytest.mark.skipif(not os.path.ismount("/dev/shm"), reason="no /dev/shm")
def test_tmpfs_target_is_refused_even_though_it_accepts_o_direct():
    with pytest.raises(InvalidInput, match="RAM"):
        run_suite("quick", f"/dev/shm/kvmkit-bench-{os.getpid()}.dat", HostRunner(), SHORT)
    assert not Path(f"/dev/shm/kvmkit-bench-{os.getpid()}.dat").exists()


# --- a real block device: a loop device over a small file --------------------------------------------------


def test_block_device_with_a_filesystem_is_refused_then_mounted_one_even_with_destructive(
    loop_device: str, disk_dir: Path
):
    subprocess.run(["mkfs.ext4", "-q", loop_device], check=True)
    probe = HostRunner().probe(loop_device)
    assert probe.kind == "block" and probe.signature == "ext4" and probe.size_bytes == 64 * MIB
    with pytest.raises(Conflict, match="holds ext4"):
        run_suite("quick", loop_device, HostRunner(), SHORT)
    mnt = disk_dir / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", loop_device, str(mnt)], capture_output=True).returncode != 0:
        pytest.fail("cannot mount the loop device here")
    try:
        opts = BenchOptions(size_bytes=64 * MIB, runtime_s=1, ramp_s=0, destructive=loop_device)
        with pytest.raises(Conflict, match="mounted"):
            run_suite("quick", loop_device, HostRunner(), opts)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert HostRunner().probe(loop_device).signature == "ext4", "the refused runs must not have written"


def test_file_backing_a_loop_device_is_refused_even_with_destructive(loop_device: str, disk_dir: Path):
    backing = str(disk_dir / "loop.img")
    opts = BenchOptions(size_bytes=64 * MIB, runtime_s=1, ramp_s=0, destructive=backing)
    with pytest.raises(Conflict, match=f"backs {loop_device}"):
        run_suite("quick", backing, HostRunner(), opts)


def test_synchronous_engine_is_refused(disk_dir: Path):
    with pytest.raises(InvalidInput, match="synchronous"):
        run_suite("quick", str(disk_dir / "t.dat"), HostRunner(), BenchOptions(ioengine="psync"))


def test_block_device_benchmark_with_destructive_runs_fio_on_the_device(loop_device: str):
    opts = BenchOptions(runtime_s=1, ramp_s=0, destructive=loop_device, qds=(1, 8))
    run = run_suite("sweep", loop_device, HostRunner(), opts)
    assert run.status == "ok", run.error
    assert run.target.kind == "block" and run.target.size_bytes == 64 * MIB
    assert run.jobs[0].phase == "fill", "a device is filled with random data before it is read"
    assert {j.iodepth for j in run.measured()} == {1, 8}
    assert all(j.iops > 0 for j in run.measured())
