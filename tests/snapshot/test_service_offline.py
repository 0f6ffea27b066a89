"""snapshot/service.py: recover pass, create (several VMs side by side), back up — the one sequence behind
`kvmkit snapshot create` and `kvmkit schedule run`, offline on test:///default + FakeMemoryDriver."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from kvmkit.config import Settings
from kvmkit.errors import OperationFailed
from kvmkit.snapshot import service
from kvmkit.snapshot.create import create
from kvmkit.snapshot.engine import Engine
from kvmkit.snapshot.model import State
from tests.snapshot.offline import offline_rig


@pytest.fixture()
def rig(tmp_path):
    with offline_rig(tmp_path) as r:
        yield r


def _leave_an_intent(rig, monkeypatch, name: str) -> None:
    """A create that died after its intent: the row `creating`, its disk snapshots on the storage."""
    real = rig.ctx.catalog.update
    monkeypatch.setattr(rig.ctx.catalog, "update", lambda snap: (_ for _ in ()).throw(OperationFailed("died")))
    with pytest.raises(OperationFailed):
        create(rig.ctx, rig.vm, name)
    monkeypatch.setattr(rig.ctx.catalog, "update", real)


def test_take_runs_the_recover_pass_before_creating(rig, monkeypatch):
    _leave_an_intent(rig, monkeypatch, "half")
    [outcome] = service.take(rig.ctx, Settings(state_dir=rig.ctx.state_dir), [rig.vm], "s1")
    assert outcome.error is None and outcome.snapshot is not None and outcome.snapshot.state is State.READY
    assert [(s.name, s.state) for s in rig.rows()] == [("s1", State.READY)]
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-s1"] for t in rig.targets}


def test_take_snapshots_several_vms_and_keeps_each_failure_to_its_vm(rig):
    other = rig.add_vm(["vda"])
    broken = rig.add_vm(["vda"])
    rig.driver.fail_on("plan", None)  # the first plan to run fails: whichever VM that is
    outcomes = service.take(rig.ctx, Settings(state_dir=rig.ctx.state_dir), [rig.vm, other, broken], "n1")
    assert [o.vm for o in outcomes] == [rig.vm, other, broken]
    assert sum(o.error is not None for o in outcomes) == 1
    assert sorted(s.vm for s in rig.rows()) == sorted(o.vm for o in outcomes if o.snapshot is not None)


def test_a_failed_backup_leaves_the_snapshot_ready_and_is_reported(rig, monkeypatch):
    import kvmkit.backup.create as backup_create

    monkeypatch.setattr(backup_create, "backup_snapshot",
                        lambda settings, snap, target=None: (_ for _ in ()).throw(OperationFailed("target full")))
    seen = []
    [outcome] = service.take(rig.ctx, Settings(state_dir=rig.ctx.state_dir), [rig.vm], "b1", backup=True,
                             on_created=lambda snap: seen.append(snap.name))
    assert seen == ["b1"] and outcome.snapshot is not None and outcome.backup is None
    assert str(outcome.backup_error) == "target full"
    assert rig.ctx.catalog.get(rig.vm_uuid, "b1").state is State.READY


def test_schedule_run_goes_through_the_service_recovering_first_and_pruning(tmp_path, monkeypatch):
    from kvmkit.backup import schedule

    with offline_rig(tmp_path) as rig:
        _leave_an_intent(rig, monkeypatch, "half")
        settings = Settings(state_dir=rig.ctx.state_dir)
        engine = Engine(uri=rig.ctx.uri, state_dir=rig.ctx.state_dir, catalog=rig.ctx.catalog, drivers=[rig.driver],
                        watchdog=rig.watchdogs, guest=rig.guest, settings=settings)
        schedule.add(settings, schedule.Schedule(vm=rig.vm, every_s=3600, keep_last=1))
        t0 = datetime(2026, 12, 3, 8, 0)
        for now in (t0, t0 + timedelta(hours=1)):
            actions = schedule.run_once(settings, now, lambda: engine)
            assert "error" not in [a.action for a in actions], actions
        assert [s.name for s in rig.rows()] == ["sched-20261203-090000"]  # the intent recovered, the older pruned
        assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-sched-20261203-090000"] for t in rig.targets}


def _kvmkit(tmp_path, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    env = {**os.environ, "KVMKIT_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_error_is_one_line_and_debug_prints_the_cause_chain(tmp_path):
    plain = _kvmkit(tmp_path, "snapshot", "delete", "no-such-vm", "s1", "--connect", "test:///default")
    assert plain.returncode == 3
    assert plain.stderr.strip().splitlines() == ["kvmkit: error: no VM named 'no-such-vm' on test:///default"]
    debug = _kvmkit(tmp_path, "--debug", "snapshot", "delete", "no-such-vm", "s1", "--connect", "test:///default")
    assert debug.returncode == 3
    assert "libvirt.libvirtError" in debug.stderr and "direct cause of the following exception" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "kvmkit: error: no VM named 'no-such-vm' on test:///default"
