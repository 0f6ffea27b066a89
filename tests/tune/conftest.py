"""Shared fixtures for the tune tests: the two shipped captures, extracted into writable trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.tune.capture import extract, view_of
from kvmkit.tune.checks import read_all
from kvmkit.tune.hostfs import HostView
from kvmkit.tune.model import Reading

FIXTURES = Path(__file__).parent / "fixtures"
DEV_VM = FIXTURES / "dev-vm-live.tar.gz"  # real: captured on the development VM
XEON = FIXTURES / "synthetic-xeon-2s.tar.gz"  # hand-written bare-metal host, see fixtures/README.md


@pytest.fixture
def xeon_folder(tmp_path: Path) -> Path:
    """The synthetic Xeon capture unpacked into a writable temporary tree."""
    return extract(XEON, tmp_path)


@pytest.fixture
def xeon(xeon_folder: Path) -> HostView:
    return view_of(xeon_folder)


def by_id(readings: list[Reading]) -> dict[str, Reading]:
    return {r.check: r for r in readings}


@pytest.fixture(scope="session")
def xeon_readings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reading]:
    """Read once per session: many known-answer tests only look at these (tests that write get their own tree)."""
    return by_id(read_all(view_of(extract(XEON, tmp_path_factory.mktemp("xeon")))))


@pytest.fixture(scope="session")
def dev_vm_readings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reading]:
    return by_id(read_all(view_of(extract(DEV_VM, tmp_path_factory.mktemp("dev-vm")))))
