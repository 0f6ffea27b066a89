"""The libvirt backends of congestion's and memory's control, on libvirt's in-memory driver (test:///default: one
running domain, "test"), driven through the shared journal as `enforce` and `revert` drive them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound
from kvmkit.memory import control as memory_control
from kvmkit.slo.journal import Journal, apply, revert
from kvmkit.slo.policy import Action
from kvmkit.virt.tunables import UNLIMITED_KIB, LibvirtMemory, LibvirtScheduler

URI = "test:///default"


def test_memory_actions_are_applied_live_journaled_and_put_back(tmp_path: Path):
    backend = LibvirtMemory(URI)
    try:
        before = backend.parameters("test")
        assert backend.domains() == ["test"] and before["soft_limit_kib"] == UNLIMITED_KIB
        target = before["balloon_kib"] - 512 * 1024
        actions = [Action("test", "balloon_kib", before["balloon_kib"], target, "reclaim"),
                   Action("test", "soft_limit_kib", None, 900_000, "reclaimed first")]  # fmt: skip
        journal = Journal(tmp_path / "journal.jsonl")
        assert [o.state for o in apply(actions, backend, journal)] == ["done", "done"]
        assert backend.parameters("test")["balloon_kib"] == target
        assert backend.parameters("test")["soft_limit_kib"] == 900_000
        undone = revert(backend, journal, holds=memory_control.holds)
        # the soft limit had no value before: nothing to put back, and it is said so
        assert [(o.param, o.state) for o in undone] == [("soft_limit_kib", "skipped"), ("balloon_kib", "reverted")]
        assert backend.parameters("test")["balloon_kib"] == before["balloon_kib"]
        with pytest.raises(InvalidInput, match="not a memory control"):
            backend.set_parameter("test", "hard_limit_kib", 1)
    finally:
        backend.close()


def test_scheduler_failures_are_recorded_not_raised_and_errors_are_one_line(tmp_path: Path):
    backend = LibvirtScheduler(URI)
    try:
        assert "weight" in backend.parameters("test")  # the test driver's one scheduler parameter
        journal = Journal(tmp_path / "journal.jsonl")
        (outcome,) = apply([Action("test", "weight", 50, 80, "boost")], backend, journal)
        assert outcome.state == "failed" and "cannot set weight=80" in outcome.detail  # the test driver refuses
        assert revert(backend, journal) == []  # a failed change is nothing to undo
        with pytest.raises(NotFound, match="no libvirt domain named 'absent'"):
            backend.parameters("absent")
    finally:
        backend.close()
    with pytest.raises(EnvironmentProblem, match=r"cannot connect to libvirt at test:///no-such-file\.xml"):
        LibvirtScheduler("test:///no-such-file.xml")
