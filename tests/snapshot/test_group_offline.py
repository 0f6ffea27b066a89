"""Consistency groups without a lab: libvirt's test:///default + FakeMemoryDriver (tests/snapshot/offline.py).

What a group must leave behind at each failure: a VM whose freeze fails fails the group (every guest thawed,
nothing kept); a crash before `ready` leaves only `creating` rows that recover discards together; revert and delete
act on every member or on none. The real freezes, reflinks and RBD groups are in test_group_live.py.
"""

from __future__ import annotations

import pytest

from kvmkit.errors import Conflict, InvalidInput, NotFound, OperationFailed
from kvmkit.snapshot.group import create_group
from kvmkit.snapshot.group_ops import delete_group, revert_group
from kvmkit.snapshot.lifecycle import delete
from kvmkit.snapshot.model import Mode, State
from kvmkit.snapshot.recover import recover
from kvmkit.snapshot.revert import revert
from kvmkit.virt.connection import connection
from tests.fakes.memory_driver import FakeMemoryDriverWithCapabilities
from tests.snapshot.offline import offline_rig


@pytest.fixture()
def rig(tmp_path):
    with offline_rig(tmp_path, targets=("vda", "vdb")) as r:
        r.other = r.add_vm(["vda", "vdb"])
        yield r


def data(rig, vm):
    return {t: rig.driver.images[rig.source(t, vm)] for t in ("vda", "vdb")}


def write(rig, vm, text):
    for t in ("vda", "vdb"):
        rig.driver.images[rig.source(t, vm)] = f"{t}:{text}".encode()


def stop(rig, vm):
    with connection(rig.ctx.uri) as conn:
        dom = conn.lookupByName(vm)
        if dom.isActive():
            dom.destroy()


def test_quiesced_group_freezes_every_vm_once_and_records_overlapping_windows(rig):
    snaps = create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    assert sorted(s.vm for s in snaps) == sorted([rig.vm, rig.other])
    assert all(s.state is State.READY and s.mode is Mode.QUIESCED and s.group == "app" for s in snaps)
    assert rig.guest.calls.count("freeze") == 2 and rig.guest.calls.count("thaw") == 2
    assert [w.events[:3] for w in rig.watchdogs.made] == [["started", "armed", "disarmed"]] * 2  # one per VM
    began = max(s.freeze_began for s in snaps)
    assert all(s.thaw_ended >= began for s in snaps)  # every window overlaps every other
    assert {d.handle for s in snaps for d in s.disks} == {
        f"mem/{vm}-{t}@kvmkit-g1" for vm in (rig.vm, rig.other) for t in ("vda", "vdb")}
    assert rig.ctx.catalog.group_vms("app") == [rig.vm, rig.other]


def test_a_stored_group_is_reused_and_an_unknown_one_refused(rig):
    create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    again = create_group(rig.ctx, "app", [], "g2")
    assert sorted(s.vm for s in again) == sorted([rig.vm, rig.other])
    with pytest.raises(InvalidInput, match="group nope is not defined"):
        create_group(rig.ctx, "nope", [], "g3")


def test_a_vm_whose_freeze_fails_fails_the_group_all_thawed_nothing_kept(rig):
    rig.guest.fail_freeze = OperationFailed("agent fsfreeze failed: timeout (fake)")
    with pytest.raises(OperationFailed, match=r"group app: .*fsfreeze failed.*every guest thawed"):
        create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    assert rig.rows() == [] and rig.kvmkit_snaps() == {}
    assert rig.guest.calls.count("thaw") >= 1 and not rig.guest.frozen
    assert all("disarmed" in w.events for w in rig.watchdogs.made)


def test_one_failing_disk_of_one_vm_removes_every_vms_snapshots(rig):
    rig.driver.fail_on("snapshot", "vdb")
    with pytest.raises(OperationFailed, match="every guest thawed"):
        create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    assert rig.rows() == [] and rig.kvmkit_snaps() == {} and not rig.guest.frozen


def test_crash_before_ready_leaves_creating_rows_that_recover_discards_together(rig, monkeypatch):
    def boom(snaps):
        raise KeyboardInterrupt  # stands for the process dying between the snapshots and `ready`

    monkeypatch.setattr(rig.ctx.catalog, "update_many", boom)
    with pytest.raises(KeyboardInterrupt):
        create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    monkeypatch.undo()
    assert [s.state for s in rig.rows()] == [State.CREATING, State.CREATING]  # none ready without the other
    recover(rig.ctx)
    assert rig.rows() == [] and rig.kvmkit_snaps() == {}


def test_crash_consistent_on_group_capable_storage_is_one_storage_snapshot_no_freeze(tmp_path):
    with offline_rig(tmp_path, targets=("vda",), driver=FakeMemoryDriverWithCapabilities()) as rig:
        other = rig.add_vm(["vda"])
        snaps = create_group(rig.ctx, "app", [rig.vm, other], "c1", crash_consistent=True)
        assert all(s.mode is Mode.GROUP and s.freeze_ms == 0.0 for s in snaps)
        assert [c for c in rig.driver.calls if c[0] == "group_snapshot"] == [("group_snapshot", "vda,vda")]
        assert {d.group for s in snaps for d in s.disks} == {"mem/kvmkit-g-app"}
        assert "freeze" not in rig.guest.calls and rig.watchdogs.made == []


def test_crash_consistent_elsewhere_pauses_every_vm_in_one_window(rig):
    snaps = create_group(rig.ctx, "app", [rig.vm, rig.other], "c1", crash_consistent=True)
    assert all(s.mode is Mode.CRASH and s.pause_ms is not None for s in snaps)
    assert [w.action for w in rig.watchdogs.made] == ["resume", "resume"]
    assert "freeze" not in rig.guest.calls


def test_group_revert_restores_every_vm_and_a_member_alone_is_refused(rig):
    create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    before = {vm: data(rig, vm) for vm in (rig.vm, rig.other)}
    for vm in (rig.vm, rig.other):
        write(rig, vm, "v2")
    with pytest.raises(Conflict, match="part of group app"):
        revert(rig.ctx, rig.vm, "g1", force_stop=True)
    with pytest.raises(Conflict, match="is running"):
        revert_group(rig.ctx, "app", "g1")
    for vm in (rig.vm, rig.other):
        stop(rig, vm)
    revert_group(rig.ctx, "app", "g1")
    assert {vm: data(rig, vm) for vm in (rig.vm, rig.other)} == before
    assert rig.ctx.catalog.journal() == []


def test_group_revert_failing_on_the_last_vm_leaves_every_vm_as_it_was(rig):
    create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    for vm in (rig.vm, rig.other):
        write(rig, vm, "v2")
        stop(rig, vm)
    after = {vm: data(rig, vm) for vm in (rig.vm, rig.other)}
    rig.driver.fail_on("swap", "vdb")  # the first VM's vdb: every disk swapped so far must go back
    with pytest.raises(OperationFailed):
        revert_group(rig.ctx, "app", "g1")
    assert {vm: data(rig, vm) for vm in (rig.vm, rig.other)} == after
    assert rig.ctx.catalog.journal() == []


def test_group_revert_interrupted_after_staging_is_undone_for_every_vm_by_recover(rig, monkeypatch):
    create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    for vm in (rig.vm, rig.other):
        write(rig, vm, "v2")
        stop(rig, vm)
    after = {vm: data(rig, vm) for vm in (rig.vm, rig.other)}

    def die(updates):
        raise SystemExit(9)  # the process dies with every disk swapped, before all are marked swapped at once

    monkeypatch.setattr(rig.ctx.catalog, "journal_update_many", die)
    with pytest.raises(SystemExit):
        revert_group(rig.ctx, "app", "g1")
    monkeypatch.undo()
    entries = rig.ctx.catalog.journal()
    assert sorted(e.payload.phase for e in entries) == ["staged", "staged"]
    recover(rig.ctx)
    assert {vm: data(rig, vm) for vm in (rig.vm, rig.other)} == after  # every VM undone, none half-reverted
    assert rig.ctx.catalog.journal() == []


def test_group_delete_removes_every_member_and_a_member_alone_is_refused(rig):
    create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    with pytest.raises(Conflict, match="part of group app"):
        delete(rig.ctx, rig.other, "g1")
    assert len(delete_group(rig.ctx, "app", "g1")) == 2
    assert rig.rows() == [] and rig.kvmkit_snaps() == {}
    with pytest.raises(NotFound, match="group app has no snapshot named 'g1'"):
        delete_group(rig.ctx, "app", "g1")


def test_recover_discards_a_group_left_creating(rig):
    snaps = create_group(rig.ctx, "app", [rig.vm, rig.other], "g1")
    for s in snaps:
        s.state = State.CREATING
    rig.ctx.catalog.update_many(snaps)
    recover(rig.ctx)
    assert rig.rows() == [] and rig.kvmkit_snaps() == {}


@pytest.mark.parametrize("args", [
    ["snapshot", "create", "--group", "app", "--all"],
    ["snapshot", "create", "--group", "app", "vm1", "--all"],
    ["snapshot", "create", "--group", "bad name!", "vm1"],
    ["snapshot", "revert", "--group", "app", "vm1", "snap1"],
    ["snapshot", "delete", "--group", "app", "vm1", "snap1"],
    ["snapshot", "revert", "vm1"],
])
def test_bad_group_input_is_one_line_with_the_invalid_input_exit_code(tmp_path, args):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "KVMKIT_STATE_DIR": str(tmp_path), "HOME": str(tmp_path),
           "KVMKIT_LIBVIRT_URI": "test:///default"}
    out = subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == InvalidInput.exit_code, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("kvmkit: error:"), out.stderr
    if (tmp_path / "catalog.sqlite").exists():  # nothing made by a refused call: no group defined, no row
        from kvmkit.snapshot.catalog import Catalog

        catalog = Catalog(tmp_path / "catalog.sqlite")
        assert catalog.groups() == {} and catalog.list() == []
        catalog.close()


def test_a_schedule_reuses_the_group_and_prunes_whole_group_snapshots(rig):
    from datetime import datetime, timedelta

    from kvmkit.config import Settings
    from kvmkit.health import events
    from kvmkit.jobs import schedule

    settings = Settings(state_dir=rig.ctx.state_dir)
    with pytest.raises(NotFound, match="no consistency group named 'app'"):
        schedule.add(settings, schedule.Schedule(vm="app", every_s=3600, keep_last=1, group=True),
                     vm_exists=lambda name: bool(rig.ctx.catalog.group_vms(name)))
    create_group(rig.ctx, "app", [rig.vm, rig.other], "by-hand")
    schedule.add(settings, schedule.Schedule(vm="app", every_s=3600, keep_last=1, group=True),
                 vm_exists=lambda name: bool(rig.ctx.catalog.group_vms(name)))
    t0 = datetime(2026, 12, 7, 8, 0)
    for now in (t0, t0 + timedelta(hours=1)):
        actions = schedule.run_once(settings, now, lambda: rig.ctx)
        assert not schedule.failed(actions), actions
    names = sorted((s.vm, s.name) for s in rig.ctx.catalog.list(group="app"))
    assert names == sorted([(vm, n) for vm in (rig.vm, rig.other) for n in ("by-hand", "sched-20261207-090000")])
    rig.driver.fail_on("plan", None)
    actions = schedule.run_once(settings, t0 + timedelta(hours=2), lambda: rig.ctx)
    assert schedule.failed(actions)
    recorded, _ = events.read(settings.state_dir)
    assert {e.vm for e in recorded} == {rig.vm, rig.other}  # every member's failure counter rises
