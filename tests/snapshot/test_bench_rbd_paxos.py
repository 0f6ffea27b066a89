"""`snapshot bench --storage rbd` sets the mon's paxos interval through a fresh client: that must not race the
monmap ("mon dne")."""

from __future__ import annotations

import pytest

from kvmkit.benchmarks import snapshot_rbd as bench_rbd
from kvmkit.lab.state import load

pytestmark = pytest.mark.lab


def test_paxos_interval_is_set_through_twenty_fresh_clients_without_mon_dne(lab_state):
    state = load(lab_state.dir)
    for _ in range(20):  # each call connects anew: the race showed in about half the bench runs
        bench_rbd._set_paxos_interval(state, bench_rbd.LAB_PAXOS_INTERVAL_S)
