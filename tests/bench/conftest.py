"""Shared fixtures for the bench tests: a scratch folder on a real disk and one short real fio run.

fio targets live under /var/tmp (a disk here; /tmp may be tmpfs elsewhere, which kvmkit refuses).
Every fio run is short (64 MiB, 1 s per job) because the machine has 2 cores shared with lab VMs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmkit.bench.engine import BenchOptions, run_suite
from kvmkit.bench.runner import HostRunner
from kvmkit.bench.schema import BenchRun

MIB = 1024 * 1024
SHORT = {"size_bytes": 64 * MIB, "runtime_s": 1.0, "ramp_s": 0.0}


def _disk_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kvmkit-bench-test-", dir="/var/tmp"))


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    path = _disk_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def quick_run() -> Iterator[BenchRun]:
    """One real `quick` run (≈ 9 s), shared by the tests that read a result."""
    folder = _disk_dir()
    try:
        yield run_suite("quick", str(folder / "quick.dat"), HostRunner(), BenchOptions(**SHORT, label="quick-a"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def sweep_run() -> Iterator[BenchRun]:
    """A real two-point sweep, for QD curves in compare/report."""
    folder = _disk_dir()
    try:
        options = BenchOptions(**SHORT, qds=(1, 16), label="sweep-b")
        yield run_suite("sweep", str(folder / "sweep.dat"), HostRunner(), options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def loop_device(disk_dir: Path) -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.fail("needs root and losetup: run the suite as root (make test installs util-linux)")
    backing = disk_dir / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MIB)
    made = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(backing)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.fail(f"no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["umount", device], capture_output=True)
        subprocess.run(["losetup", "-d", device], capture_output=True)
