from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_LAB_DIR, lab_vm

P = TEST_LAB_DIR.name  # every VM and file of these tests starts with the lab folder's name


@pytest.fixture(scope="session")
def snap_env(lab_state, tmp_path_factory) -> dict[str, str]:
    """Environment for kvmkit processes: the test lab's libvirt and a private state dir (catalog, locks)."""
    state_dir = tmp_path_factory.mktemp("kvmkit-state")
    os.environ["KVMKIT_STATE_DIR"] = str(state_dir)
    return {**os.environ, "KVMKIT_STATE_DIR": str(state_dir), "KVMKIT_LAB_DIR": str(lab_state.dir)}


@pytest.fixture(scope="session")
def file_vm(lab_state, snap_env) -> str:
    """A running VM with two ext4 raw disks on the XFS pool."""
    return lab_vm(lab_state, f"{P}-file", file_disks=2, rbd_disks=0, size_mib=256)


@pytest.fixture(scope="session")
def noagent_vm(lab_state, snap_env) -> str:
    return lab_vm(lab_state, f"{P}-noagent2", file_disks=1, rbd_disks=0, size_mib=64, agent_running=False)


@pytest.fixture()
def engine(snap_env):
    from kvmkit.snapshot.engine import Engine

    return Engine.from_config("qemu:///system")


def kvmkit(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def backup_env(snap_env: dict[str, str], tmp_path: Path, settings: str = "") -> dict[str, str]:
    """snap_env with a config naming one dir backup target `sec` (a fresh folder under tmp_path), plus `settings`
    (TOML lines placed before the target table)."""
    target = tmp_path / "secondary"
    target.mkdir()
    config = tmp_path / "kvmkit.toml"
    config.write_text(f'{settings}[[backup_targets]]\nname = "sec"\nkind = "dir"\npath = "{target}"\n')
    return {**snap_env, "KVMKIT_CONFIG": str(config)}


def disk_paths(conn, vm: str) -> list[Path]:
    from kvmkit.virt.connection import live_disks

    return [Path(d.source) for d in live_disks(conn.lookupByName(vm)) if d.kind == "file"]


def wait_thawed(dom, within_s: float, why: str = "after kvmkit died") -> None:
    """The guest thawed (by kvmkit's watchdog) within `within_s`, else the test fails saying so."""
    import time

    from kvmkit.virt import agent

    deadline = time.monotonic() + within_s
    while agent.freeze_status(dom) != "thawed":
        assert time.monotonic() < deadline, f"guest still frozen {within_s:g} s {why}"
        time.sleep(0.1)
