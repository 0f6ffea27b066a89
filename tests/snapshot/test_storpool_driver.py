"""The StorPool driver against the FAKE StorPool API (tests/fakes/storpool_api.py), through StorPool's real Python
binding over real HTTP — no VM, no loop devices (the fake keeps each volume as a plain file here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from storpool import spapi, sptypes

from kvmkit.config import StorPoolSettings
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, NotFound
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions
from kvmkit.snapshot.drivers.storpool import (
    TAG_OWNER,
    TAG_ROLE,
    TAG_SNAP,
    TAG_VM,
    TAG_VOLUME,
    Endpoint,
    StorPoolDriver,
    load_endpoint,
)
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk
from tests.fakes.storpool_api import FakeStorPoolApi

VM_UUID = "5f0c3a52-8c57-4a8e-9d3e-000000000018"
CATALOG = "0123456789abcdef0123456789abcdef"  # a catalog id (Catalog.catalog_id: uuid4 hex)
OPTS = PlanOptions(owner=CATALOG, vm_uuid=VM_UUID)  # as snapshot/create.py fills them
MIB = 1 << 20


@pytest.fixture()
def fake(tmp_path):
    api = FakeStorPoolApi(tmp_path / "fake-storpool", devices=False, require_reflink=False).start()
    for i in range(4):
        api.make_volume(f"vm18-vd{'abcd'[i]}", 4 * MIB)
    yield api
    api.stop()


def endpoint(fake: FakeStorPoolApi, **kw) -> Endpoint:
    return Endpoint(fake.host, fake.port, fake.token, "test", **kw)


@pytest.fixture()
def driver(fake) -> StorPoolDriver:
    return StorPoolDriver(endpoint(fake))


def disk(target: str, source: str | None = None) -> Disk:
    return Disk(target, "block", "raw", source or f"/dev/storpool/vm18-{target}")


def write(fake: FakeStorPoolApi, volume: str, data: bytes) -> None:
    with fake.volumes[volume].path.open("r+b") as fh:
        fh.write(data)


def read(fake: FakeStorPoolApi, volume: str, n: int) -> bytes:
    with fake.volumes[volume].path.open("rb") as fh:
        return fh.read(n)


def test_the_fake_answers_in_the_shapes_the_binding_validates(fake, driver):
    driver.snapshot(driver.plan(disk("vda"), "s1", PlanOptions()))
    api = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    # strict construction raises on any missing or mistyped field (the binding's calls would return partials)
    for raw in api.volumesList(returnRawAPIData=True):
        sptypes.VolumeSummary(raw)
    for raw in api.snapshotsList(returnRawAPIData=True):
        sptypes.SnapshotSummary(raw)


def test_claims_storpool_devices_whatever_libvirt_calls_them():
    drv = StorPoolDriver(Endpoint("127.0.0.1", 9, "t", "test"))
    assert drv.claims(disk("vda"))
    assert drv.claims(disk("vda", "/dev/storpool-byid/abc.def.1"))
    assert drv.claims(Disk("vda", "file", "raw", "/dev/storpool/x"))  # <disk type='file'> on a StorPool device
    assert drv.claims(Disk("vda", "file", "raw", "/dev/storpool-byid/abc.def.1"))
    assert not drv.claims(Disk("vda", "block", "raw", "/dev/sdb"))
    assert not drv.claims(Disk("vda", "file", "raw", "/var/lib/x.raw"))


def test_plan_touches_nothing_then_snapshot_is_one_tagged_call(fake, driver):
    planned = driver.plan(disk("vdb"), "s1", OPTS)
    assert {m for m, _ in fake.calls} == {"GET"} and not fake.snapshots
    assert planned.handle == "kvmkit--vm18-vdb--s1" and planned.size_bytes == 4 * MIB
    before = fake.count("VolumeSnapshot")
    made = driver.snapshot(planned)
    assert fake.count("VolumeSnapshot") == before + 1
    snap = fake.snapshots["kvmkit--vm18-vdb--s1"]
    assert snap.on_volume == "vm18-vdb" and made.location["snapshot_id"] == snap.global_id
    assert snap.tags == {TAG_OWNER: CATALOG, TAG_VM: VM_UUID, TAG_SNAP: "s1",
                         TAG_VOLUME: fake.volumes["vm18-vdb"].global_id, TAG_ROLE: "snapshot"}
    assert made.owner == CATALOG and driver.owner_of(made) == CATALOG and driver.tag_of(made.handle) == "s1"
    assert driver.exists(made) and driver.owned(disk("vdb")) == [made.handle]
    assert fake.token not in made.model_dump_json()  # the record (catalog row, --json) never holds the token
    driver.delete(made)
    assert not driver.exists(made) and "kvmkit--vm18-vdb--s1" not in fake.snapshots
    driver.delete(made)  # a missing one is not an error


def test_volume_is_found_by_global_id_link_too(fake, driver):
    gid = fake.volumes["vm18-vdc"].global_id
    planned = driver.plan(disk("vdc", f"/dev/storpool-byid/{gid}"), "s2", PlanOptions())
    assert planned.location["volume"] == "vm18-vdc"


def test_a_taken_name_is_refused_and_kept(fake, driver):
    api = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    api.snapshotCreate("vm18-vda", {"name": "kvmkit--vm18-vda--theirs"})
    with pytest.raises(Conflict, match="already exists; kvmkit will not overwrite it"):
        driver.plan(disk("vda"), "theirs", PlanOptions())
    assert "kvmkit--vm18-vda--theirs" in fake.snapshots


def test_group_snapshot_is_one_api_call_for_four_volumes(fake, driver):
    disks = [disk(t) for t in ("vda", "vdb", "vdc", "vdd")]
    assert driver.serves_as_group(disks)
    assert not driver.serves_as_group([*disks, Disk("vde", "file", "raw", "/x.raw")])
    planned = [driver.plan(d, "g1", OPTS) for d in disks]
    before = list(fake.calls)
    made = driver.group_snapshot(planned, "vm18-5f0c3a52", "g1")
    assert fake.calls[len(before):] == [("POST", "VolumesGroupSnapshot")]
    assert {d.group for d in made} == {"kvmkit--vm18-5f0c3a52--g1"}
    for d in made:
        tags = fake.snapshots[d.handle].tags
        assert tags[TAG_OWNER] == CATALOG and tags[TAG_VM] == VM_UUID and tags[TAG_SNAP] == "g1"
        assert tags[TAG_VOLUME] == d.location["volume_id"] == fake.volumes[d.location["volume"]].global_id
        assert d.location["snapshot_id"] == fake.snapshots[d.handle].global_id


def test_owned_lists_kvmkit_snapshots_of_any_catalog_and_tags_tell_whose(fake, driver):
    from kvmkit.snapshot.ownership import whose

    api = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    gid = fake.volumes["vm18-vda"].global_id
    api.snapshotCreate("vm18-vda", {"name": "backup-tool-1", "tags": {"owner": "someone"}})
    api.snapshotCreate("vm18-vda", {"name": "kvmkit--vm18-vda--other",
                                    "tags": {TAG_OWNER: "cothercatalog", TAG_VOLUME: gid}})
    api.snapshotCreate("vm18-vda", {"name": "kvmkit--vm18-vda--by-hand"})  # kvmkit's naming, no tags at all
    api.snapshotCreate("vm18-vdb", {"name": "kvmkit--vm18-vdb--elsewhere", "tags": {TAG_OWNER: CATALOG}})
    mine = driver.snapshot(driver.plan(disk("vda"), "mine", OPTS))
    assert driver.owned(disk("vda")) == sorted([mine.handle, "kvmkit--vm18-vda--other", "kvmkit--vm18-vda--by-hand"])
    found = {h: mine.model_copy(update={"handle": h, "owner": None}) for h in driver.owned(disk("vda"))}
    verdicts = {h: whose(driver, snap, CATALOG).whose for h, snap in found.items()}
    assert verdicts == {mine.handle: "ours", "kvmkit--vm18-vda--other": "foreign",
                        "kvmkit--vm18-vda--by-hand": "unknown"}
    assert driver.tag_of("kvmkit--vm18-vda--by-hand") == "by-hand" and driver.tag_of("backup-tool-1") is None
    theirs = mine.model_copy(update={"handle": "backup-tool-1"})
    with pytest.raises(Conflict, match="not a kvmkit snapshot"):
        driver.delete(theirs)
    assert "backup-tool-1" in fake.snapshots and fake.snapshots["backup-tool-1"].tags == {"owner": "someone"}


def test_set_owner_marks_an_unmarked_snapshot_for_adoption_and_keeps_its_other_tags(fake, driver):
    api = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    api.snapshotCreate("vm18-vdc", {"name": "kvmkit--vm18-vdc--old", "tags": {TAG_SNAP: "old"}})
    found = driver.plan(disk("vdc"), "x", OPTS).model_copy(update={"handle": "kvmkit--vm18-vdc--old"})
    assert driver.owner_of(found) is None
    driver.set_owner(found, CATALOG)
    assert driver.owner_of(found) == CATALOG and fake.snapshots[found.handle].tags == {TAG_SNAP: "old",
                                                                                      TAG_OWNER: CATALOG}


def test_the_volume_a_snapshot_was_taken_of_is_not_its_child_even_without_a_location(fake, driver):
    """An adopted row carries no location: in_use must still tell the snapshot's own volume from a clone."""
    api = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    api.snapshotCreate("vm18-vdb", {"name": "kvmkit--vm18-vdb--adopted"})
    assert fake.volumes["vm18-vdb"].parent == "kvmkit--vm18-vdb--adopted"  # its latest snapshot is its parent
    bare = DiskSnapshot(target="vdb", driver="storpool", source="/dev/storpool/vm18-vdb",
                        handle="kvmkit--vm18-vdb--adopted")
    assert driver.in_use(bare) is None
    api.volumeCreate({"name": "clone-of-adopted", "parent": bare.handle})
    assert "clone-of-adopted" in (driver.in_use(bare) or "") and "vm18-vdb" not in (driver.in_use(bare) or "")


def test_a_plan_without_a_catalog_id_leaves_no_owner_tag(fake, driver):
    made = driver.snapshot(driver.plan(disk("vdd"), "anon", PlanOptions()))
    assert made.owner is None and driver.owner_of(made) is None
    assert TAG_OWNER not in fake.snapshots[made.handle].tags and TAG_VM not in fake.snapshots[made.handle].tags


def test_revert_swap_restores_data_and_undo_puts_the_newer_data_back(fake, driver):
    write(fake, "vm18-vda", b"before")
    snap = driver.snapshot(driver.plan(disk("vda"), "r1", OPTS))
    write(fake, "vm18-vda", b"after!")
    staged = driver.stage_revert(disk("vda"), snap, RevertOptions())
    safety = staged.data.safety
    assert fake.snapshots[safety].tags[TAG_ROLE] == "prerevert"
    assert fake.snapshots[safety].tags[TAG_OWNER] == CATALOG and fake.snapshots[safety].tags[TAG_VM] == VM_UUID
    assert driver.tag_of(safety) is None  # a safety snapshot is never adopted as a snapshot
    driver.swap(staged)
    assert read(fake, "vm18-vda", 6) == b"before"
    driver.undo(staged)  # another disk failed: this one goes back to how it was
    assert read(fake, "vm18-vda", 6) == b"after!" and safety not in fake.snapshots
    staged = driver.stage_revert(disk("vda"), snap, RevertOptions())
    driver.swap(staged)
    driver.commit(staged)
    assert read(fake, "vm18-vda", 6) == b"before" and staged.data.safety not in fake.snapshots
    assert driver.owned(disk("vda")) == [snap.handle]
    assert fake.volumes["vm18-vda"].attached == {1: "rw"}  # detached for the revert, re-attached as it was


def test_a_snapshot_a_volume_was_created_from_is_in_use(fake, driver):
    snap = driver.snapshot(driver.plan(disk("vda"), "c1", PlanOptions()))
    api = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    api.volumeCreate({"name": "clone-of-c1", "parent": snap.handle})
    assert "clone-of-c1" in (driver.in_use(snap) or "")
    driver.delete(snap)  # StorPool defers it: listed `deleted: true` while the clone depends on it
    assert fake.snapshots[snap.handle].deleted and not driver.exists(snap)
    api.volumeDelete("clone-of-c1")
    assert snap.handle not in fake.snapshots


def test_api_errors_are_one_kvmkit_line(fake, driver):
    with pytest.raises(NotFound, match=r"^disk vdz: looking up StorPool volume vm18-vdz: objectDoesNotExist"):
        driver.plan(disk("vdz"), "x", PlanOptions())
    with pytest.raises(InvalidInput):
        driver.plan(disk("vda"), "x" * 200, PlanOptions())
    assert not fake.snapshots


def test_wrong_token_is_one_line_without_the_token(fake):
    drv = StorPoolDriver(Endpoint(fake.host, fake.port, "s3cr3t-token-value", "test"))
    with pytest.raises(EnvironmentProblem) as err:
        drv.plan(disk("vda"), "x", PlanOptions())
    assert "refused kvmkit's token" in str(err.value) and "s3cr3t" not in str(err.value)
    assert "s3cr3t" not in repr(Endpoint(fake.host, fake.port, "s3cr3t-token-value", "test"))


def test_unreachable_api_is_one_line_at_once(fake, driver):
    port = fake.port
    fake.stop()
    drv = StorPoolDriver(Endpoint("127.0.0.1", port, "t", "/etc/storpool.conf"))
    t0 = time.monotonic()
    with pytest.raises(EnvironmentProblem, match=rf"^cannot reach the StorPool API at 127\.0\.0\.1:{port} "
                                                 r"\(from /etc/storpool\.conf\): "):
        drv.plan(disk("vda"), "x", PlanOptions())
    assert time.monotonic() - t0 < 5  # the binding's retries, bounded by kvmkit's budget (not 31 s of backoff)


def test_endpoint_is_read_by_the_bindings_loader(fake, tmp_path):
    conf = fake.write_conf(tmp_path / "storpool.conf")
    assert conf.stat().st_mode & 0o777 == 0o600
    ep = load_endpoint(StorPoolSettings(conf=conf), env={})
    assert (ep.host, ep.port, ep.token, ep.source) == (fake.host, fake.port, fake.token, str(conf))
    assert fake.token not in repr(ep)
    assert load_endpoint(None, env={}) is None or Path("/etc/storpool.conf").exists()
    with pytest.raises(InvalidInput, match="does not exist"):
        load_endpoint(StorPoolSettings(conf=tmp_path / "absent.conf"), env={})
    inline = load_endpoint(StorPoolSettings(host="10.0.0.1", port=81, token_env="SPTOK"), env={"SPTOK": "abc"})
    assert (inline.host, inline.port, inline.token) == ("10.0.0.1", 81, "abc")


def test_registry_adds_the_driver_only_when_configured(fake, tmp_path, monkeypatch):
    from kvmkit.config import load
    from kvmkit.snapshot.drivers.registry import default_drivers

    monkeypatch.setenv("KVMKIT_CONFIG", str(tmp_path / "kvmkit.toml"))
    (tmp_path / "kvmkit.toml").write_text(f'state_dir = "{tmp_path}"\n')
    names = [d.name for d in default_drivers(load())]
    assert "storpool" not in names or Path("/etc/storpool.conf").exists()
    monkeypatch.setenv("KVMKIT_STORPOOL_CONF", str(fake.write_conf(tmp_path / "storpool.conf")))
    names = [d.name for d in default_drivers(load())]
    assert names[0] == "storpool" and "file" in names  # first: a <disk type='file'> on /dev/storpool is StorPool's


def test_lab_block_disks_become_block_disk_records(tmp_path):
    from kvmkit.lab import domain
    from kvmkit.lab.guest import GuestImage
    from kvmkit.virt.disks import parse_disks

    image = GuestImage(tmp_path / "k", tmp_path / "i", "console=ttyS0")
    xml = domain.domain_xml(domain.VmSpec("t", image, tmp_path / "c.log", disks=(
        domain.FileDisk(tmp_path / "a.raw"), domain.BlockDisk(Path("/dev/storpool/vol-b")))))
    disks = parse_disks(xml)
    assert [(d.target, d.kind, d.source) for d in disks] == [
        ("vda", "file", str(tmp_path / "a.raw")), ("vdb", "block", "/dev/storpool/vol-b")]
    drv = StorPoolDriver(Endpoint("127.0.0.1", 9, "t", "test"))
    assert [drv.claims(d) for d in disks] == [False, True]


def test_kvmkit_storpool_conf_env_sets_the_section(tmp_path):
    from kvmkit import config

    settings = config.load(tmp_path / "none.toml", env={"KVMKIT_STORPOOL_CONF": "/x/storpool.conf"})
    assert settings.storpool is not None and settings.storpool.conf == Path("/x/storpool.conf")
    assert config.load(tmp_path / "none.toml", env={}).storpool is None
    assert "s3cr3t" not in repr(StorPoolSettings(host="h", token="s3cr3t"))


def test_reading_a_snapshot_needs_this_hosts_client_id(fake, driver):
    made = driver.snapshot(driver.plan(disk("vda"), "r1", PlanOptions()))
    with pytest.raises(EnvironmentProblem, match="client id"), driver.reading(made):
        pass


def test_a_service_that_is_not_the_storpool_api_is_one_line(tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        drv = StorPoolDriver(Endpoint("127.0.0.1", server.server_address[1], "t", "test"))
        with pytest.raises(EnvironmentProblem, match="does not answer like the StorPool API"):
            drv.plan(disk("vda"), "x", PlanOptions())
    finally:
        server.shutdown()
        server.server_close()


def _sp_disks(names: list[str]) -> str:
    return "".join(f"<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                   f"<source dev='/dev/storpool/{n}'/><target dev='vd{n[-1]}' bus='virtio'/></disk>" for n in names)


def test_the_engine_tags_with_its_catalog_and_the_domain_of_its_own_uri_and_a_second_catalog_leaves_them(
        fake, tmp_path):
    """Offline, on libvirt's test:///default: the engine passes the catalog id and the VM uuid of the domain it
    looked up on its own URI (no libvirt scan in the driver); a second catalog's recover reports the snapshots as
    foreign and deletes none; the first catalog's recover deletes its own half-made one."""
    import dataclasses

    from kvmkit.snapshot.catalog import Catalog
    from kvmkit.snapshot.create import create
    from kvmkit.snapshot.model import Mode, Snapshot, State
    from kvmkit.snapshot.recover import recover
    from tests.snapshot.offline import NOW, offline_rig

    volumes = ["vm18-vda", "vm18-vdb"]
    with offline_rig(tmp_path, targets=(), extra_disks=_sp_disks(volumes)) as rig:
        drv = StorPoolDriver(endpoint(fake))
        ctx = dataclasses.replace(rig.ctx, drivers=[drv], new_drivers=lambda: [StorPoolDriver(endpoint(fake))])
        snap = create(ctx, rig.vm, "e1", crash_consistent=True)
        assert snap.mode is Mode.GROUP and [d.handle for d in snap.disks] == [f"kvmkit--{v}--e1" for v in volumes]
        for d in snap.disks:
            assert fake.snapshots[d.handle].tags[TAG_VM] == rig.vm_uuid
            assert fake.snapshots[d.handle].tags[TAG_OWNER] == ctx.catalog.catalog_id == d.owner
        # catalog A's half-made snapshot: a `creating` row and its object, as a kill -9 leaves them
        half = create(ctx, rig.vm, "half", crash_consistent=True)
        row = ctx.catalog.get(rig.vm_uuid, "half", rig.vm)
        row.state = State.CREATING
        ctx.catalog.update(row)
        # catalog B (a second state dir) on the same host and cluster
        other = Catalog(tmp_path / "second" / "catalog.sqlite")
        try:
            ctx_b = dataclasses.replace(ctx, catalog=other, state_dir=tmp_path / "second")
            b_row = ctx_b.catalog.insert(Snapshot(vm_uuid=rig.vm_uuid, vm=rig.vm, name="half", created=NOW,
                                                  mode=Mode.GROUP, state=State.CREATING, disks=half.disks))
            assert b_row.id is not None  # two catalogs raced for one name: B's intent names A's objects
            actions = recover(ctx_b, full=True)
            assert all(fake.snapshots.get(d.handle) for d in [*snap.disks, *half.disks])  # B deleted none
            foreign = sorted(a.handle for a in actions if a.action == "left foreign snapshot")
            assert foreign == sorted(d.handle for d in [*snap.disks, *half.disks])  # reported, with A's id
            assert {a.owner for a in actions if a.whose == "foreign"} == {ctx.catalog.catalog_id}
            assert ctx_b.catalog.list() == []  # B's own intent is dropped, A's objects left
        finally:
            other.close()
        actions = recover(ctx, full=True)  # A: its half-made snapshot goes, e1 stays
        assert not [d for d in half.disks if d.handle in fake.snapshots]
        assert all(d.handle in fake.snapshots for d in snap.disks)
        assert [s.name for s in ctx.catalog.list()] == ["e1"]


def test_the_storpool_bench_command_refuses_bad_input_before_touching_a_lab(tmp_path):
    """The bench's CLI edge imports what it needs (a moved helper broke it once) and checks its input first."""
    from kvmkit.benchmarks.storpool_cli import bench_storpool

    with pytest.raises(InvalidInput, match="--rounds"):
        bench_storpool(tmp_path / "no-lab", "test:///default", "4", 0, 0.0, json_out=True)
    with pytest.raises(InvalidInput, match="1-16 disks"):
        bench_storpool(tmp_path / "no-lab", "test:///default", "17", 1, 0.0, json_out=True)
    assert not (tmp_path / "no-lab").exists()
