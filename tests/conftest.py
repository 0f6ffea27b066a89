"""Shared fixtures. The lab fixture brings up a real lab once per session, in its own folder beside any user lab."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_LAB_DIR = Path(os.environ.get("KVMKIT_TEST_LAB_DIR", "/var/lib/kvmkit/tlab"))
URI = "qemu:///system"


@pytest.fixture(scope="session")
def lab_state() -> Iterator:
    """A running lab: Ceph + VM tlab1 with one file disk (vda) and one RBD disk (vdb)."""
    from kvmkit.lab import lab

    os.environ["KVMKIT_LAB_DIR"] = str(TEST_LAB_DIR)
    lab.down(TEST_LAB_DIR)  # whatever an earlier, interrupted run left
    state = lab.up(TEST_LAB_DIR, URI, vms=1, disks_per_vm=2, with_ceph=True, storage="mixed", disk_size_mib=256)
    yield state
    lab.down(TEST_LAB_DIR)


@pytest.fixture()
def conn(lab_state) -> Iterator:
    from kvmkit.virt.connection import connection

    with connection(lab_state.uri) as c:
        yield c


def lab_vm(lab_state, name: str, **spec) -> str:
    """The test lab's VM `name`, defined and started with `spec` (lab.add_vm) the first time it is asked for."""
    from kvmkit.lab import lab
    from kvmkit.lab.state import load

    state = load(lab_state.dir)
    if state.vm(name) is None:
        lab.add_vm(state, name, **spec)
    return name
