"""The lab's record of what it made and started: one JSON file (0600), written atomically."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from kvmkit.lab.ceph import CephState
from kvmkit.lab.pool import PoolState
from kvmkit.lab.rgw import RgwState

STATE_FILE = "state.json"


class LabDisk(BaseModel):
    target: str
    kind: Literal["file", "rbd", "block"]
    source: str  # file path, pool/image, or a host block device (not the lab's: see lab.add_vm)
    size_mib: int


class LabVm(BaseModel):
    name: str
    disks: list[LabDisk]
    memory_mib: int = 128
    with_fio: bool = False
    agent: bool = True  # False: the guest runs no qemu-ga (for crash-consistent and no-agent tests)
    console_log: Path
    shape: str = "default"  # how its disks are defined: default, cloudstack, nova, libvirt (lab/shapes.py)


class LabState(BaseModel):
    version: Literal[1] = 1
    dir: Path
    uri: str
    accel: str = "tcg"
    accel_reason: str = ""
    started_pids: dict[str, int] = {}
    pool: PoolState | None = None
    ceph: CephState | None = None
    rgw: RgwState | None = None  # an S3 gateway on ceph (lab up --rgw)
    vms: list[LabVm] = []
    secrets: list[str] = []  # UUIDs of the libvirt secrets the lab defined (cephx keys of shaped VMs)

    def vm(self, name: str) -> LabVm | None:
        return next((vm for vm in self.vms if vm.name == name), None)


def load(lab_dir: Path) -> LabState | None:
    path = lab_dir / STATE_FILE
    if not path.exists():
        return None
    return LabState.model_validate_json(path.read_text())


def save(state: LabState) -> None:
    state.dir.mkdir(parents=True, exist_ok=True)
    path = state.dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(state.model_dump_json(indent=2))
    tmp.replace(path)


@contextmanager
def locked(lab_dir: Path) -> Iterator[None]:
    """One lab operation at a time (up/down from two shells must not interleave)."""
    lab_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lab_dir.parent / f".{lab_dir.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
