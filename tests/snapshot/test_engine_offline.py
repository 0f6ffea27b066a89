"""The engine's state machine without a lab: libvirt's test:///default + FakeMemoryDriver (tests/snapshot/offline.py).

Every failure point of create — plan, intent, watchdog, freeze, each disk, thaw, deadline, catalog — with the
catalog and storage it must leave behind; then delete, revert, recover and flatten the same way.
"""

from __future__ import annotations

import pytest

from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, KvmkitError, NotFound, OperationFailed
from kvmkit.snapshot.create import create
from kvmkit.snapshot.lifecycle import delete, flatten, list_snapshots
from kvmkit.snapshot.model import Mode, State
from kvmkit.snapshot.recover import recover
from kvmkit.snapshot.revert import revert
from tests.fakes.lab_doubles import FakeWatchdogFactory
from tests.fakes.memory_driver import FakeMemoryDriverWithCapabilities
from tests.snapshot.offline import NOW, offline_rig


@pytest.fixture()
def rig(tmp_path):
    with offline_rig(tmp_path) as r:
        yield r


def assert_untouched(rig) -> None:
    """Nothing of the snapshot left: no row, no kvmkit snapshot on the storage, guest thawed."""
    assert rig.rows() == []
    assert rig.kvmkit_snaps() == {}
    assert not rig.guest.frozen


# --- create: the good paths -------------------------------------------------------------------------------------
def test_quiesced_create_freezes_once_snapshots_every_disk_and_marks_ready(rig):
    snap = create(rig.ctx, rig.vm, "s1")
    assert snap.state is State.READY and snap.mode is Mode.QUIESCED
    assert [d.target for d in snap.disks] == rig.targets
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-s1"] for t in rig.targets}
    assert [c for c in rig.guest.calls if c in ("freeze", "thaw")] == ["freeze", "thaw"]
    assert rig.watchdogs.made[0].events == ["started", "armed", "disarmed"]
    assert snap.freeze_ms is not None and snap.storage_ms is not None and snap.freeze_ms >= snap.storage_ms
    assert snap.created == NOW
    stored = rig.ctx.catalog.get(rig.vm_uuid, "s1")
    assert stored.state is State.READY and stored.disks == snap.disks
    assert rig.driver.releases == 1  # what plan opened is closed


def test_default_name_comes_from_the_context_clock(rig):
    snap = create(rig.ctx, rig.vm)
    assert snap.name == "snap-20261203-100000-000"


def test_crash_consistent_pauses_and_resumes_the_vm(rig):
    snap = create(rig.ctx, rig.vm, "c1", crash_consistent=True)
    assert snap.mode is Mode.CRASH and snap.pause_ms is not None and snap.freeze_ms is None
    assert "freeze" not in rig.guest.calls and rig.watchdogs.made[0].action == "resume"
    from kvmkit.virt.connection import connection, is_paused

    with connection(rig.ctx.uri) as conn:  # the domain runs again
        assert not is_paused(conn.lookupByName(rig.vm))


def test_group_capable_storage_takes_one_group_snapshot_without_freeze_or_pause(tmp_path):
    with offline_rig(tmp_path, driver=FakeMemoryDriverWithCapabilities()) as rig:
        snap = create(rig.ctx, rig.vm, "g1", crash_consistent=True)
        assert snap.mode is Mode.GROUP and snap.freeze_ms == 0.0 and snap.pause_ms is None
        assert {d.group for d in snap.disks} == {f"mem/kvmkit-{rig.vm}-{rig.vm_uuid[:8]}"}
        assert ("group_snapshot", "vda,vdb,vdc") in rig.driver.calls and rig.watchdogs.made == []
        assert "freeze" not in rig.guest.calls


def test_shut_off_vm_is_snapshotted_offline_with_no_freeze(tmp_path):
    with offline_rig(tmp_path, running=False) as rig:
        snap = create(rig.ctx, rig.vm, "off1")
        assert snap.mode is Mode.OFFLINE and snap.freeze_ms is None and rig.guest.calls == []
        assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-off1"] for t in rig.targets}


# --- create: refused before anything is touched ----------------------------------------------------------------
def test_no_guest_agent_is_refused_before_the_intent(rig):
    rig.guest.answers = False
    with pytest.raises(EnvironmentProblem, match="no guest agent answers"):
        create(rig.ctx, rig.vm, "s1")
    assert_untouched(rig)
    assert rig.watchdogs.made == [] and ("plan", "vda") not in rig.driver.calls


def test_a_taken_name_is_a_conflict_and_changes_nothing(rig):
    first = create(rig.ctx, rig.vm, "s1")
    with pytest.raises(Conflict, match="already has a snapshot named 's1'"):
        create(rig.ctx, rig.vm, "s1")
    assert [s.name for s in rig.rows()] == ["s1"] and rig.ctx.catalog.get(rig.vm_uuid, "s1").disks == first.disks


@pytest.mark.parametrize("name", [".hidden", "a/b", "x" * 65, "sp ace"])
def test_invalid_names_are_refused(rig, name):
    with pytest.raises(InvalidInput):
        create(rig.ctx, rig.vm, name)
    assert_untouched(rig)


def test_unknown_vm_is_not_found(rig):
    with pytest.raises(NotFound, match="no VM named 'nope'"):
        create(rig.ctx, "nope", "s1")


def test_a_disk_no_driver_serves_is_refused_with_its_kind(tmp_path):
    extra = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/nonexistent.raw'/>"
             "<target dev='vdz' bus='virtio'/></disk>")
    with offline_rig(tmp_path, extra_disks=extra) as rig:
        with pytest.raises(InvalidInput, match=r"disk vdz \(file raw /nonexistent\.raw\): no kvmkit storage driver"):
            create(rig.ctx, rig.vm, "s1")
        assert_untouched(rig)


# --- create: every failure point, with its end state -----------------------------------------------------------
def test_failure_at_plan_leaves_no_row_and_no_storage_and_never_freezes(rig):
    rig.driver.fail_on("plan", "vdb", Conflict("disk vdb: the name is taken on the storage"))
    with pytest.raises(Conflict, match="name is taken"):
        create(rig.ctx, rig.vm, "s1")
    assert_untouched(rig)
    assert "freeze" not in rig.guest.calls and rig.watchdogs.made == [] and rig.driver.releases == 1


def test_failure_at_the_intent_leaves_no_storage_and_never_freezes(rig, monkeypatch):
    def broken_insert(snap):
        raise OperationFailed("catalog is read-only (fake)")

    monkeypatch.setattr(rig.ctx.catalog, "insert", broken_insert)
    with pytest.raises(OperationFailed, match="read-only"):
        create(rig.ctx, rig.vm, "s1")
    assert_untouched(rig)
    assert "freeze" not in rig.guest.calls and ("snapshot", "vda") not in rig.driver.calls


def test_watchdog_that_cannot_arm_means_nothing_is_frozen(tmp_path):
    with offline_rig(tmp_path, watchdogs=FakeWatchdogFactory(fail_arm=True)) as rig:
        with pytest.raises(OperationFailed, match="nothing was frozen"):
            create(rig.ctx, rig.vm, "s1")
        assert_untouched(rig)
        assert "freeze" not in rig.guest.calls


def test_failure_at_freeze_thaws_drops_the_row_and_takes_no_snapshot(rig):
    rig.guest.fail_freeze = OperationFailed("VM x: agent fsfreeze failed: timeout (fake)")
    with pytest.raises(OperationFailed, match=r"fsfreeze failed.*guest thawed; removed 0 partial") as info:
        create(rig.ctx, rig.vm, "s1")
    assert_untouched(rig)
    assert rig.guest.calls[-1] == "thaw" and rig.watchdogs.made[0].events[:3] == ["started", "armed", "disarmed"]
    assert isinstance(info.value.__cause__, OperationFailed)  # the original error stays the cause (--debug)


@pytest.mark.parametrize("target", ["vda", "vdb", "vdc"])
def test_failure_of_any_one_disk_removes_the_others_and_thaws(rig, target):
    rig.driver.fail_on("snapshot", target)
    with pytest.raises(OperationFailed, match=rf"snapshot of {target}.*guest thawed; removed 2 partial"):
        create(rig.ctx, rig.vm, "s1")
    assert_untouched(rig)
    assert [c for c in rig.guest.calls if c in ("freeze", "thaw")] == ["freeze", "thaw"]


def test_an_error_subclass_keeps_its_class_and_fields_through_the_cleanup_message(rig):
    class StorageBusy(Conflict):
        def __init__(self, message: str, pool: str) -> None:
            super().__init__(message)
            self.pool = pool

    rig.driver.fail_on("snapshot", "vdb", StorageBusy("pool p1 is busy", "p1"))
    with pytest.raises(StorageBusy) as info:
        create(rig.ctx, rig.vm, "s1")
    assert info.value.pool == "p1" and "removed 2 partial" in str(info.value) and info.value.exit_code == 4


def test_failure_at_thaw_hands_the_thaw_to_the_watchdog_and_cleans_up(rig):
    rig.guest.fail_thaw = OperationFailed("VM x: agent fsthaw failed (fake)")
    with pytest.raises(OperationFailed, match="fsthaw failed"):
        create(rig.ctx, rig.vm, "s1")
    assert "abandoned" in rig.watchdogs.made[0].events
    assert rig.rows() == [] and rig.kvmkit_snaps() == {}


def test_a_freeze_that_outlasts_the_deadline_is_discarded(tmp_path):
    with offline_rig(tmp_path, watchdogs=FakeWatchdogFactory(fire=True)) as rig:
        with pytest.raises(OperationFailed, match="outlasted the 10 s freeze deadline"):
            create(rig.ctx, rig.vm, "s1")
        assert_untouched(rig)


def test_failure_marking_ready_leaves_the_intent_and_recover_discards_it(rig, monkeypatch):
    real_update = rig.ctx.catalog.update

    def broken_update(snap):
        raise OperationFailed("disk full (fake)")

    monkeypatch.setattr(rig.ctx.catalog, "update", broken_update)
    with pytest.raises(OperationFailed, match="disk full"):
        create(rig.ctx, rig.vm, "s1")
    # the crash-equivalent state: the intent row and every disk snapshot, the guest thawed
    assert [(s.name, s.state) for s in rig.rows()] == [("s1", State.CREATING)]
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-s1"] for t in rig.targets}
    assert not rig.guest.frozen
    monkeypatch.setattr(rig.ctx.catalog, "update", real_update)
    actions = recover(rig.ctx)
    assert [(a.action, a.detail) for a in actions] == [
        ("discarded half-made", "snapshot s1: 3 disk snapshot(s) removed, row dropped")]
    assert_untouched(rig)


# --- delete, flatten, list --------------------------------------------------------------------------------------
def test_delete_removes_every_disk_snapshot_and_the_row(rig):
    create(rig.ctx, rig.vm, "s1")
    create(rig.ctx, rig.vm, "s2")
    delete(rig.ctx, rig.vm, "s1")
    assert [s.name for s in list_snapshots(rig.ctx, rig.vm)] == ["s2"]
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-s2"] for t in rig.targets}


def test_delete_of_a_snapshot_in_use_is_refused_through_the_declared_capability(tmp_path):
    with offline_rig(tmp_path, driver=FakeMemoryDriverWithCapabilities()) as rig:
        snap = create(rig.ctx, rig.vm, "s1")
        rig.driver.pinned[snap.disks[1].handle] = "a clone depends on it"
        with pytest.raises(Conflict, match="in use: a clone depends on it"):
            delete(rig.ctx, rig.vm, "s1")
        assert rig.ctx.catalog.get(rig.vm_uuid, "s1").state is State.READY
        assert len(rig.kvmkit_snaps()) == 3


def test_delete_interrupted_by_a_storage_error_is_finished_by_recover(rig):
    create(rig.ctx, rig.vm, "s1")
    rig.driver.fail_on("delete", "vdb")
    with pytest.raises(OperationFailed):
        delete(rig.ctx, rig.vm, "s1")
    assert [(s.name, s.state) for s in rig.rows()] == [("s1", State.DELETING)]
    assert [a.action for a in recover(rig.ctx)] == ["finished deleting"]
    assert_untouched(rig)


def test_delete_of_an_unknown_snapshot_is_not_found(rig):
    with pytest.raises(NotFound, match="has no snapshot named 'ghost'"):
        delete(rig.ctx, rig.vm, "ghost")


def test_flatten_asks_only_drivers_that_declare_it(tmp_path):
    with offline_rig(tmp_path) as rig:
        assert flatten(rig.ctx, rig.vm) == []
        assert not any(verb == "flatten" for verb, _ in rig.driver.calls)
    with offline_rig(tmp_path / "b", driver=FakeMemoryDriverWithCapabilities()) as rig:
        rig.driver.clones.add(rig.source("vdb"))
        assert flatten(rig.ctx, rig.vm) == ["vdb"]


# --- revert -----------------------------------------------------------------------------------------------------
def test_revert_of_a_shut_off_vm_restores_every_disk_and_closes_its_journal(rig):
    create(rig.ctx, rig.vm, "s1")
    before = rig.data()
    rig.write("v2")
    rig.set_running(False)
    revert(rig.ctx, rig.vm, "s1")
    assert rig.data() == before
    assert rig.ctx.catalog.journal() == []
    assert not any(".kvmkit-" in image for image in rig.driver.images)


def test_revert_of_a_running_vm_needs_force_stop(rig):
    create(rig.ctx, rig.vm, "s1")
    with pytest.raises(Conflict, match="is running; shut it down first or pass --force-stop"):
        revert(rig.ctx, rig.vm, "s1")


def test_revert_with_force_stop_powers_off_reverts_and_starts_again(rig):
    create(rig.ctx, rig.vm, "s1")
    before = rig.data()
    rig.write("v2")
    revert(rig.ctx, rig.vm, "s1", force_stop=True, stop_timeout_s=2)
    assert rig.data() == before
    from kvmkit.virt.connection import connection

    with connection(rig.ctx.uri) as conn:
        assert conn.lookupByName(rig.vm).isActive()


@pytest.mark.parametrize("verb", ["stage_revert", "swap"])
def test_revert_failing_on_the_second_disk_leaves_every_disk_as_it_was(rig, verb):
    create(rig.ctx, rig.vm, "s1")
    rig.write("v2")
    after = rig.data()
    rig.set_running(False)
    rig.driver.fail_on(verb, "vdb")
    with pytest.raises(OperationFailed):
        revert(rig.ctx, rig.vm, "s1")
    assert rig.data() == after
    assert rig.ctx.catalog.journal() == []
    assert not any(".kvmkit-" in image for image in rig.driver.images)


def test_revert_of_a_snapshot_not_ready_is_refused(rig, monkeypatch):
    real_update = rig.ctx.catalog.update
    monkeypatch.setattr(rig.ctx.catalog, "update", lambda snap: (_ for _ in ()).throw(OperationFailed("x")))
    with pytest.raises(OperationFailed):
        create(rig.ctx, rig.vm, "s1")
    monkeypatch.setattr(rig.ctx.catalog, "update", real_update)
    rig.set_running(False)
    with pytest.raises(Conflict, match="is creating, not ready"):
        revert(rig.ctx, rig.vm, "s1")


# --- recover ----------------------------------------------------------------------------------------------------
def _interrupted_revert(rig, phase: str):
    """What a kill -9 leaves: every disk staged (and, for `swapped`, swapped), the journal in that phase."""
    from kvmkit.snapshot.drivers.base import RevertOptions
    from kvmkit.snapshot.journal import RevertJournal
    from kvmkit.virt.connection import connection, live_disks

    snap = rig.ctx.catalog.get(rig.vm_uuid, "s1")
    with connection(rig.ctx.uri) as conn:
        current = {d.target: d for d in live_disks(conn.lookupByName(rig.vm))}
    staged = [rig.driver.stage_revert(current[d.target], d, RevertOptions()) for d in snap.disks]
    if phase == "swapped":
        for item in staged:
            rig.driver.swap(item)
    rig.ctx.catalog.journal_add(rig.vm_uuid, RevertJournal(snapshot="s1", phase=phase, staged=staged))


@pytest.mark.parametrize(("phase", "expect_snapshot_data"), [("staged", False), ("swapped", True)])
def test_recover_finishes_or_undoes_an_interrupted_revert_by_its_journal(rig, phase, expect_snapshot_data):
    create(rig.ctx, rig.vm, "s1")
    at_snapshot = rig.data()
    rig.write("v2")
    current = rig.data()
    rig.set_running(False)
    _interrupted_revert(rig, phase)
    actions = recover(rig.ctx)
    assert [a.action for a in actions] == ["revert to s1"]
    assert rig.data() == (at_snapshot if expect_snapshot_data else current)
    assert rig.ctx.catalog.journal() == []
    assert not any(".kvmkit-" in image for image in rig.driver.images)


def test_recover_reports_a_damaged_journal_entry_and_leaves_it(rig):
    rig.ctx.catalog.db.execute("INSERT INTO journal (vm_uuid, op, data, created) VALUES (?, 'revert', ?, 'now')",
                               (rig.vm_uuid, '{"snapshot": "s1", "phase": "half", "staged": []}'))
    actions = recover(rig.ctx)
    assert [a.action for a in actions] == ["left unreadable journal entry"]
    assert "phase" in actions[0].detail
    assert len(rig.ctx.catalog.journal()) == 1 and rig.ctx.catalog.journal()[0].damage


def test_recover_thaws_a_guest_left_frozen(rig):
    rig.guest.frozen = True
    create(rig.ctx, rig.vm, "s1")  # a row to look at; then pretend a crash left the guest frozen and an intent
    rig.guest.frozen = True
    rig.ctx.catalog.db.execute("UPDATE snapshots SET state='creating'")
    actions = recover(rig.ctx)
    assert [a.action for a in actions] == ["discarded half-made", "thawed"]
    assert not rig.guest.frozen


def test_recover_skips_a_vm_whose_lock_is_held(rig):
    from kvmkit.snapshot.guard import vm_lock

    create(rig.ctx, rig.vm, "s1")
    rig.ctx.catalog.db.execute("UPDATE snapshots SET state='creating'")
    with vm_lock(rig.ctx.state_dir, rig.vm_uuid, rig.vm):
        assert recover(rig.ctx) == []
    assert [s.state for s in rig.rows()] == [State.CREATING]


def test_full_recover_deletes_only_its_own_uncatalogued_snapshots_and_drops_dangling_rows(rig):
    create(rig.ctx, rig.vm, "kept")
    create(rig.ctx, rig.vm, "dangling")
    vda = rig.source("vda")
    rig.driver.snaps[vda]["kvmkit-orphan"] = b"x"
    rig.driver.owners[f"{vda}@kvmkit-orphan"] = rig.ctx.catalog.catalog_id  # ours, its row lost
    rig.driver.snaps[vda]["kvmkit-unmarked"] = b"u"  # kvmkit's naming, no catalog id: reported only
    rig.driver.snaps[vda]["operator-made"] = b"y"  # not kvmkit's at all: never even listed
    del rig.driver.snaps[rig.source("vdc")]["kvmkit-dangling"]
    actions = {(a.action, a.detail) for a in recover(rig.ctx, full=True)}
    assert ("deleted orphan", f"{vda}@kvmkit-orphan") in actions
    assert ("left unknown snapshot", f"{vda}@kvmkit-unmarked (no catalog id); not this catalog's: --adopt or "
                                     "--purge-foreign") in actions
    assert ("dropped dangling row", f"snapshot dangling: missing {rig.source('vdc')}@kvmkit-dangling") in actions
    assert [s.name for s in rig.rows()] == ["kept"]
    assert rig.driver.snaps[vda] == {"kvmkit-kept": b"vda:v1", "kvmkit-unmarked": b"u", "operator-made": b"y"}


def test_a_dry_recover_says_what_it_would_do_and_changes_nothing_then_the_real_one_does_it(rig):
    create(rig.ctx, rig.vm, "kept")
    create(rig.ctx, rig.vm, "dangling")
    create(rig.ctx, rig.vm, "half")
    rig.ctx.catalog.db.execute("UPDATE snapshots SET state='creating' WHERE name='half'")
    rig.guest.frozen = True  # and a guest a crash left frozen
    vda = rig.source("vda")
    rig.driver.snaps[vda]["kvmkit-orphan"] = b"x"
    rig.driver.owners[f"{vda}@kvmkit-orphan"] = rig.ctx.catalog.catalog_id
    rig.driver.snaps[vda]["kvmkit-unmarked"] = b"u"
    del rig.driver.snaps[rig.source("vdc")]["kvmkit-dangling"]
    before = (rig.rows(), {k: dict(v) for k, v in rig.driver.snaps.items()})
    dry = {a.action for a in recover(rig.ctx, full=True, strays="purge", dry_run=True)}
    assert dry == {"would discard half-made", "would thaw", "would delete orphan", "would purge unknown",
                   "would drop dangling row"}
    assert (rig.rows(), {k: dict(v) for k, v in rig.driver.snaps.items()}) == before and rig.guest.frozen
    done = {a.action for a in recover(rig.ctx, full=True, strays="purge")}
    assert done == {"discarded half-made", "thawed", "deleted orphan", "purged unknown", "dropped dangling row"}
    assert [s.name for s in rig.rows()] == ["kept"] and not rig.guest.frozen


def test_recover_with_nothing_to_do_does_not_even_connect(rig, monkeypatch):
    from kvmkit.snapshot import recover as recover_mod

    monkeypatch.setattr(recover_mod, "connection", lambda uri: pytest.fail("connected"))
    assert recover(rig.ctx) == []


def test_error_from_libvirt_keeps_its_cause(rig):
    with pytest.raises(KvmkitError) as info:
        from kvmkit.virt.connection import connection, lookup

        with connection(rig.ctx.uri) as conn:
            lookup(conn, "missing-vm")
    assert type(info.value.__cause__).__name__ == "libvirtError"
