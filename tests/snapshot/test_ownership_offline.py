"""Ownership (issue 15): two catalogs — two state dirs — on one host and one storage. Each snapshot object carries
the id of the catalog that made it; recover deletes only its own, reports the rest, and adopts or purges them
only when asked. Offline on test:///default + FakeMemoryDriver; the lab test does the same on real files."""

from __future__ import annotations

import dataclasses

import pytest

from kvmkit.errors import Conflict, OperationFailed
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.create import create
from kvmkit.snapshot.lifecycle import delete, discard
from kvmkit.snapshot.model import Mode, State
from kvmkit.snapshot.recover import recover
from tests.snapshot.offline import offline_rig


@pytest.fixture()
def two(tmp_path):
    """(first, second context): the same libvirt and storage, each with its own state dir and catalog."""
    with offline_rig(tmp_path / "a") as rig:
        other = Catalog(tmp_path / "b" / "catalog.sqlite")
        second = dataclasses.replace(rig.ctx, state_dir=tmp_path / "b", catalog=other)
        try:
            yield rig, second
        finally:
            other.close()


def test_catalogs_have_distinct_stable_ids(tmp_path):
    a, b = Catalog(tmp_path / "a.sqlite"), Catalog(tmp_path / "b.sqlite")
    assert a.catalog_id != b.catalog_id and len(a.catalog_id) == 32
    assert Catalog(tmp_path / "a.sqlite").catalog_id == a.catalog_id


def test_every_disk_snapshot_is_marked_with_its_catalog(two):
    rig, _ = two
    snap = create(rig.ctx, rig.vm, "s1")
    assert {d.owner for d in snap.disks} == {rig.ctx.catalog.catalog_id}
    assert {rig.driver.owners[d.handle] for d in snap.disks} == {rig.ctx.catalog.catalog_id}


def test_the_second_catalogs_recover_deletes_none_of_the_firsts_snapshots(two):
    rig, second = two
    first = create(rig.ctx, rig.vm, "s1")
    actions = recover(second, full=True)
    assert {a.action for a in actions} == {"left foreign snapshot"}
    assert sorted(a.handle for a in actions) == sorted(d.handle for d in first.disks)
    assert {a.owner for a in actions} == {rig.ctx.catalog.catalog_id}
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-s1"] for t in rig.targets}
    assert rig.ctx.catalog.get(rig.vm_uuid, "s1").state is State.READY
    assert recover(rig.ctx, full=True) == []  # the first still agrees with its storage


def test_a_row_never_deletes_another_catalogs_object(two):
    """Two catalogs planned the same name; the first made it. The second's cleanup of its own intent must not
    take the first's snapshot with it."""
    rig, second = two
    create(rig.ctx, rig.vm, "same")
    row = rig.ctx.catalog.get(rig.vm_uuid, "same")
    theirs = second.catalog.insert(row.model_copy(update={"id": None, "state": State.CREATING}))
    assert discard(second, theirs) == 0
    assert second.catalog.list() == []
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-same"] for t in rig.targets}


def test_delete_refuses_a_snapshot_another_catalog_made(two):
    rig, second = two
    create(rig.ctx, rig.vm, "s1")
    second.catalog.insert(rig.ctx.catalog.get(rig.vm_uuid, "s1").model_copy(update={"id": None}))
    with pytest.raises(Conflict, match="made by another kvmkit catalog"):
        delete(second, rig.vm, "s1")
    assert len(rig.kvmkit_snaps()) == 3


def test_adopt_gives_stray_snapshots_a_row_and_this_catalogs_mark(two):
    rig, second = two
    create(rig.ctx, rig.vm, "s1")
    rig.driver.snaps[rig.source("vda")]["kvmkit-old"] = b"legacy"  # unmarked: an older kvmkit made it
    actions = recover(second, full=True, strays="adopt")
    assert sorted(a.action for a in actions) == ["adopted foreign"] * 3 + ["adopted unknown"]
    rows = {s.name: s for s in second.catalog.list()}
    assert sorted(rows) == ["old", "s1"] and rows["s1"].mode is Mode.CRASH and rows["s1"].state is State.READY
    assert [d.target for d in rows["s1"].disks] == ["vda", "vdb", "vdc"]
    assert {rig.driver.owners[d.handle] for s in rows.values() for d in s.disks} == {second.catalog.catalog_id}
    assert recover(second, full=True) == []  # now its own, catalogued: nothing to do
    delete(second, rig.vm, "old")
    assert "kvmkit-old" not in rig.driver.snaps[rig.source("vda")]


def test_purge_foreign_deletes_stray_snapshots_only_when_asked(two):
    rig, second = two
    create(rig.ctx, rig.vm, "s1")
    assert len(rig.kvmkit_snaps()) == 3
    actions = recover(second, full=True, strays="purge")
    assert {a.action for a in actions} == {"purged foreign"}
    assert rig.kvmkit_snaps() == {}


def test_an_interrupted_create_is_cleaned_by_its_own_catalog_only(two, monkeypatch):
    rig, second = two
    real = rig.ctx.catalog.update
    monkeypatch.setattr(rig.ctx.catalog, "update", lambda snap: (_ for _ in ()).throw(OperationFailed("died")))
    with pytest.raises(OperationFailed):
        create(rig.ctx, rig.vm, "half")
    monkeypatch.setattr(rig.ctx.catalog, "update", real)
    assert {a.action for a in recover(second, full=True)} == {"left foreign snapshot"}
    assert len(rig.kvmkit_snaps()) == 3
    assert [a.action for a in recover(rig.ctx)] == ["discarded half-made"]
    assert rig.kvmkit_snaps() == {}


def test_a_recover_limited_to_one_vm_leaves_the_others_alone(two):
    rig, second = two
    other = rig.add_vm(["vda"])
    create(rig.ctx, rig.vm, "s1")
    create(rig.ctx, other, "s1")
    actions = recover(second, full=True, strays="purge", only_vm=other)
    assert [a.handle for a in actions] == [f"mem/{other}-vda@kvmkit-s1"]
    assert rig.kvmkit_snaps() == {rig.source(t): ["kvmkit-s1"] for t in rig.targets}
