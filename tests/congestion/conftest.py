from __future__ import annotations

import pytest

from kvmkit.benchmarks.congestion import quietest_core


@pytest.fixture(scope="session")
def quiet_core() -> int:
    """The least busy core of the moment: the lab's VMs and other suites share these 2 cores."""
    return quietest_core()
