"""overlay.block_migration decides on what QEMU reports — its block nodes and its migration status — and on the
error class QMP keeps, never on an error message's wording. QEMU's side is a FakeQemu answering QMP by command."""

from __future__ import annotations

import pytest

from kvmkit.errors import Conflict
from kvmkit.snapshot.drivers.file import overlay
from kvmkit.virt.qmp import ExecuteError


class FakeDomain:
    def name(self) -> str:
        return "vm1"


class FakeQemu:
    """Answers query-named-block-nodes / query-migrate from its state; blockdev-add can be told to fail."""

    def __init__(self, nodes=(), migration: str | None = None, add_error: ExecuteError | None = None,
                 migration_after_add: str | None = None) -> None:
        self.nodes, self.migration, self.add_error = list(nodes), migration, add_error
        self.migration_after_add = migration_after_add
        self.commands: list[str] = []

    def __call__(self, dom, command: str, arguments=None):
        self.commands.append(command)
        if command == "query-named-block-nodes":
            return [{"node-name": n} for n in self.nodes]
        if command == "query-migrate":
            return {"status": self.migration} if self.migration else {}
        if command == "blockdev-add":
            if self.migration_after_add:
                self.migration = self.migration_after_add
            if self.add_error:
                raise self.add_error
            self.nodes.append(arguments["node-name"])
            return {}
        raise AssertionError(command)


def _error(error_class: str, desc: str) -> ExecuteError:
    return ExecuteError(f"VM vm1: QMP blockdev-add: {desc}", "blockdev-add", error_class, desc)


@pytest.fixture()
def beside(tmp_path):
    return tmp_path


def test_adds_the_blocker_node(monkeypatch, beside):
    qemu = FakeQemu()
    monkeypatch.setattr(overlay, "qmp", qemu)
    assert overlay.block_migration(FakeDomain(), beside) is True
    assert overlay.NO_MIGRATION_NODE in qemu.nodes and (beside / overlay.EMPTY_DIR).is_dir()


def test_a_blocker_left_by_an_interrupted_run_is_reused_not_added_twice(monkeypatch, beside):
    qemu = FakeQemu(nodes=[overlay.NO_MIGRATION_NODE])
    monkeypatch.setattr(overlay, "qmp", qemu)
    assert overlay.block_migration(FakeDomain(), beside) is True
    assert "blockdev-add" not in qemu.commands


def test_a_running_migration_is_a_conflict_before_anything_is_added(monkeypatch, beside):
    qemu = FakeQemu(migration="active")
    monkeypatch.setattr(overlay, "qmp", qemu)
    with pytest.raises(Conflict, match="is being migrated"):
        overlay.block_migration(FakeDomain(), beside)
    assert "blockdev-add" not in qemu.commands


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "none"])
def test_a_finished_migration_does_not_stop_the_snapshot(monkeypatch, beside, status):
    monkeypatch.setattr(overlay, "qmp", FakeQemu(migration=status))
    assert overlay.block_migration(FakeDomain(), beside) is True


def test_a_migration_that_started_in_between_is_a_conflict_caused_by_qemus_refusal(monkeypatch, beside):
    refusal = _error("GenericError", "disallowing migration blocker (migration in progress)")
    monkeypatch.setattr(overlay, "qmp", FakeQemu(add_error=refusal, migration_after_add="active"))
    with pytest.raises(Conflict, match="is being migrated") as info:
        overlay.block_migration(FakeDomain(), beside)
    assert info.value.__cause__ is refusal


def test_a_qemu_that_cannot_add_the_node_leaves_migration_unblocked_with_a_warning(monkeypatch, beside, caplog):
    monkeypatch.setattr(overlay, "qmp", FakeQemu(add_error=_error("GenericError", "Permission denied")))
    assert overlay.block_migration(FakeDomain(), beside) is False
    assert "GenericError" in caplog.text and "not blocked" in caplog.text
