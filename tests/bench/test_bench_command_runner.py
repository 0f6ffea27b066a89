"""CommandRunner: fio and every probe through argv-only exec (the guest-exec shape), run here on the host."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmkit.bench.command_runner import CommandRunner, LocalExec
from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.runner import HostRunner
from kvmkit.errors import Conflict, EnvironmentProblem, OperationFailed

MIB = 1024 * 1024


@pytest.fixture
def runner() -> CommandRunner:
    return CommandRunner("exec:host", LocalExec(), tmp_root="/var/tmp")


def _facts(probe):
    return (probe.kind, probe.parent_exists, probe.size_bytes, probe.filesystem, probe.mounted_at, probe.signature)


def test_probes_agree_with_the_host_runner(runner: CommandRunner, disk_dir: Path):
    data = disk_dir / "data.img"
    data.write_bytes(b"x" * 8192)
    for path in (data, disk_dir, disk_dir / "new.dat", disk_dir / "no" / "new.dat"):
        assert _facts(runner.probe(str(path))) == _facts(HostRunner().probe(str(path))), path
    assert runner.probe(str(data)).owned is False
    free_cmd, free_host = runner.probe(str(data)).free_bytes, HostRunner().probe(str(data)).free_bytes
    assert abs(free_cmd - free_host) < 64 * MIB


def test_machine_facts_match_the_host(runner: CommandRunner):
    here, there = HostRunner().machine(), runner.machine()
    assert (there.kernel, there.cpus, there.hostname) == (here.kernel, here.cpus, here.hostname)
    assert abs(there.ram_bytes - here.ram_bytes) < 64 * MIB


def test_block_device_probe_sees_the_filesystem(runner: CommandRunner, loop_device: str):
    subprocess.run(["mkfs.ext4", "-q", loop_device], check=True)
    probe = runner.probe(loop_device)
    assert (probe.kind, probe.size_bytes, probe.signature) == ("block", 64 * MIB, "ext4")
    with pytest.raises(Conflict, match="holds ext4"):
        run_suite("quick", loop_device, runner, BenchOptions(size_bytes=64 * MIB, runtime_s=1, ramp_s=0))


def test_a_suite_runs_end_to_end_through_exec_only(runner: CommandRunner, disk_dir: Path):
    run = run_suite(
        "sweep", str(disk_dir / "t.dat"), runner, BenchOptions(size_bytes=64 * MIB, runtime_s=1, ramp_s=0, qds=(8,))
    )
    assert run.status == "ok", run.error
    assert run.machine.runner == "exec:host"
    assert [j.phase for j in run.jobs] == ["fill", "measure", "measure"]
    assert all(j.latency_series for j in run.measured()), "logs read back through `cat`"
    assert run.resources.fio_peak_rss_kib == 0, "unknown through exec, and said so, not guessed"
    assert sorted(p.name for p in disk_dir.iterdir()) == [], "scratch folder and created file removed"
    assert not list(Path("/var/tmp").glob("kvmkit-bench.*"))


def test_fio_missing_there_is_an_environment_problem(runner: CommandRunner, disk_dir: Path):
    with pytest.raises(EnvironmentProblem, match="not found"):
        run_suite("quick", str(disk_dir / "t.dat"), runner, BenchOptions(fio="/nonexistent/fio"))


class BusyboxExec:
    """The lab guest's toolset: busybox-static applets only (no blkid in 1.35), plus fio itself."""

    def __init__(self) -> None:
        listing = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True).stdout
        self.applets = set(listing.split())
        self.local = LocalExec()
        self.calls: list[str] = []

    def __call__(self, argv: list[str], timeout_s: float):
        self.calls.append(argv[0])
        if argv[0] in self.applets:
            return self.local(["busybox", *argv], timeout_s)
        if argv[0].endswith("fio"):
            return self.local(argv, timeout_s)
        raise OperationFailed(f"guest-exec: failed to execute {argv[0]}: no such file")  # what the agent says


needs_busybox = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")


@needs_busybox
def test_busybox_only_probe_of_a_device_with_a_filesystem(loop_device: str):
    subprocess.run(["mkfs.ext4", "-q", loop_device], check=True)
    busybox = BusyboxExec()
    probe = CommandRunner("vm:sim", busybox, tmp_root="/var/tmp").probe(loop_device)
    assert (probe.kind, probe.size_bytes) == ("block", 64 * MIB)
    assert probe.signature in ("ext4", "data"), "blkid if the applet exists, else non-zero first MiB"
    with pytest.raises(Conflict):
        run_suite("quick", loop_device, CommandRunner("vm:sim", busybox), BenchOptions(size_bytes=64 * MIB))


@needs_busybox
def test_busybox_only_toolset_runs_a_suite(disk_dir: Path):
    busybox = BusyboxExec()
    runner = CommandRunner("vm:sim", busybox, tmp_root="/var/tmp")
    run = run_suite(
        "sweep", str(disk_dir / "t.dat"), runner, BenchOptions(size_bytes=64 * MIB, runtime_s=1, ramp_s=0, qds=(4,))
    )
    assert run.status == "ok", run.error
    assert all(j.latency_series for j in run.measured())
    assert {"stat", "df", "mktemp", "cat", "rm", "touch"} <= set(busybox.calls)
    assert list(disk_dir.iterdir()) == []
