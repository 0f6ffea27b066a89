"""The StorPool driver as a real cluster needs it, against the FAKE StorPool API (kvmkit.benchmarks.storpool_fake)
through StorPool's own binding: CloudStack's unnamed volumes, detach before revert and delete, the 200-byte rule,
group tags, deletes checked by globalId, transient retries within a deadline, config errors, disks libvirt names
either way. Offline: volumes are plain files."""

from __future__ import annotations

import pytest
from storpool import spapi

from kvmkit.config import Settings, StorPoolSettings
from kvmkit.errors import Conflict, InvalidInput, OperationFailed
from kvmkit.snapshot.drivers import storpool_api
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions
from kvmkit.snapshot.drivers.registry import driver_for
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
from kvmkit.snapshot.drivers.storpool_names import NAME_AND_TAGS_BYTES, used_bytes
from kvmkit.virt.disks import Disk
from tests.fakes.storpool_api import FakeStorPoolApi

VM_UUID = "5f0c3a52-8c57-4a8e-9d3e-000000000025"
CATALOG = "0123456789abcdef0123456789abcdef"
OPTS = PlanOptions(owner=CATALOG, vm_uuid=VM_UUID)
MIB = 1 << 20
CS_TAGS = {"cs": "volume", "uuid": "6d2c2e0e-5a7e-4b5e-8c2f-2f3c1e1a0b25", "cvm": VM_UUID}  # StorPoolHelper's


@pytest.fixture()
def fake(tmp_path):
    api = FakeStorPoolApi(tmp_path / "fake-storpool", devices=False, require_reflink=False,
                          cluster_id="fake.c25").start()
    yield api
    api.stop()


@pytest.fixture()
def driver(fake) -> StorPoolDriver:
    return StorPoolDriver(Endpoint(fake.host, fake.port, fake.token, "test", client_id=fake.client_id))


def cs_volume(fake: FakeStorPoolApi, target: str):
    """An unnamed volume, tagged and attached the way CloudStack does (StorPoolUtil.volumeCreate "name": "")."""
    vol = fake.make_volume("", 4 * MIB, tags=CS_TAGS)
    return vol, Disk(target, "block", "raw", f"/dev/storpool-byid/{vol.global_id}")


def test_a_cloudstack_unnamed_volume_is_snapshotted_reverted_and_deleted(fake, driver):
    vol, disk = cs_volume(fake, "vda")
    planned = driver.plan(disk, "s1", OPTS)
    assert planned.handle == f"kvmkit--{vol.global_id}--s1" and planned.location["volume_id"] == vol.global_id
    made = driver.snapshot(planned)
    assert fake.snapshots[made.handle].tags[TAG_VOLUME] == vol.global_id
    assert driver.owned(disk) == [made.handle] and driver.tag_of(made.handle) == "s1"
    with vol.path.open("r+b") as fh:
        fh.write(b"later")
    staged = driver.stage_revert(disk, made, RevertOptions())
    driver.swap(staged)
    driver.commit(staged)
    assert vol.path.read_bytes()[:5] == b"\0" * 5 and vol.attached == {1: "rw"}
    driver.delete(made)
    assert not driver.exists(made) and vol.tags == CS_TAGS


def test_revert_detaches_from_every_client_and_reattaches_as_before(fake, driver):
    vol, disk = cs_volume(fake, "vda")
    client = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    client.volumesReassign(json=[{"volume": "~" + vol.global_id, "ro": [5]}])
    made = driver.snapshot(driver.plan(disk, "s1", OPTS))
    staged = driver.stage_revert(disk, made, RevertOptions())
    assert (staged.data.rw, staged.data.ro) == ([1], [5])
    before = len(fake.bodies)
    driver.swap(staged)
    posts = [e for e, _ in fake.bodies[before:]]
    assert posts.index("VolumesReassign") < posts.index("VolumeRevert") < len(posts) - 1
    endpoint, (item,) = fake.bodies[before:][-1]
    assert endpoint == "VolumesReassign" and not item.get("force")
    assert (item["volume"], item["rw"], item["ro"]) == ("~" + vol.global_id, [1], [5])
    assert vol.attached == {1: "rw", 5: "ro"}
    driver.commit(staged)


def test_a_failed_revert_still_reattaches_and_the_undo_restores(fake, driver):
    vol, disk = cs_volume(fake, "vda")
    made = driver.snapshot(driver.plan(disk, "s1", OPTS))
    staged = driver.stage_revert(disk, made, RevertOptions())
    fake.fail_next("VolumeRevert", 1, transient=False)
    with pytest.raises(OperationFailed, match="reverting"):
        driver.swap(staged)
    assert vol.attached == {1: "rw"}
    driver.undo(staged)
    assert staged.data.safety not in fake.snapshots and vol.attached == {1: "rw"}


def test_a_volume_grown_since_the_snapshot_gets_the_snapshots_size_back(fake, driver):
    vol, disk = cs_volume(fake, "vda")
    made = driver.snapshot(driver.plan(disk, "s1", OPTS))
    client = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    client.volumeUpdate("~" + vol.global_id, {"size": 8 * MIB})
    assert vol.size == 8 * MIB
    staged = driver.stage_revert(disk, made, RevertOptions())
    driver.swap(staged)
    assert vol.size == 4 * MIB and vol.path.stat().st_size == 4 * MIB
    driver.commit(staged)


def test_the_name_and_tags_budget_is_checked_at_plan_and_tags_are_trimmed(fake, driver):
    vol = fake.make_volume("v" * 100, 4 * MIB)
    disk = Disk("vda", "block", "raw", f"/dev/storpool/{vol.name}")
    planned = driver.plan(disk, "t1", OPTS)
    tags = driver.tags(planned)
    assert used_bytes(planned.handle, tags) <= NAME_AND_TAGS_BYTES
    assert tags[TAG_OWNER] == CATALOG and tags[TAG_VOLUME] == vol.global_id  # ownership is never trimmed
    assert TAG_ROLE not in tags  # the first optional tag to go
    driver.snapshot(planned)
    calls = len(fake.calls)
    with pytest.raises(InvalidInput, match="bytes, more than StorPool's 200"):
        driver.plan(disk, "x" * 45, OPTS)
    assert all(m == "GET" for m, _ in fake.calls[calls:])  # refused before anything was made


def test_every_group_member_carries_the_full_ownership_tags_itself(fake, driver):
    disks = [cs_volume(fake, t)[1] for t in ("vda", "vdb")]
    planned = [driver.plan(d, "g1", OPTS) for d in disks]
    before = len(fake.bodies)
    made = driver.group_snapshot(planned, "vm25-5f0c3a52", "g1")
    (endpoint, body), = fake.bodies[before:]
    assert endpoint == "VolumesGroupSnapshot" and "tags" not in body
    for spec, p in zip(body["volumes"], planned, strict=True):
        assert spec["tags"][TAG_OWNER] == CATALOG and spec["tags"][TAG_VM] == VM_UUID
        assert spec["tags"][TAG_VOLUME] == p.location["volume_id"] and spec["tags"][TAG_SNAP] == "g1"
    assert all(d.location["snapshot_id"] == fake.snapshots[d.handle].global_id for d in made)


def test_delete_checks_the_recorded_global_id_and_volume_tag(fake, driver):
    _vol, disk = cs_volume(fake, "vda")
    made = driver.snapshot(driver.plan(disk, "s1", OPTS))
    client = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    client.snapshotDelete(made.handle)  # someone deletes it and makes another under the same name
    client.snapshotCreate("~" + made.location["volume_id"], {"name": made.handle, "tags": {"theirs": "1"}})
    with pytest.raises(Conflict, match=r"not .* that kvmkit made"):
        driver.delete(made)
    assert driver.exists(made)
    other = made.model_copy(update={"location": {**made.location, "snapshot_id": "",
                                                 "volume_id": "fake.c25.zz"}})
    client.snapshotUpdate(made.handle, {"tags": {TAG_VOLUME: made.location["volume_id"]}})
    with pytest.raises(Conflict, match="tagged as of volume"):
        driver.delete(other)
    assert driver.exists(made)


def test_delete_detaches_a_snapshot_an_interrupted_backup_left_attached(fake, driver):
    _vol, disk = cs_volume(fake, "vda")
    made = driver.snapshot(driver.plan(disk, "s1", OPTS))
    client = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    client.volumesReassign(json=[{"snapshot": made.handle, "ro": [1]}])
    driver.delete(made)
    assert made.handle not in fake.snapshots
    assert fake.bodies[-1][0] == "SnapshotDelete" and fake.bodies[-2][0] == "VolumesReassign"


def test_transient_errors_are_retried_and_the_freeze_budget_bounds_them(fake, driver):
    _vol, disk = cs_volume(fake, "vda")
    planned = driver.plan(disk, "s1", OPTS)
    fake.fail_next("VolumeSnapshot", 2)
    made = driver.snapshot(planned)
    assert driver.exists(made) and fake.count("VolumeSnapshot") == 3
    planned = driver.plan(disk, "s2", OPTS)
    fake.fail_next("VolumeSnapshot", 100)
    with pytest.raises(OperationFailed, match="fake-transient"):
        driver.snapshot(planned)
    tries = fake.count("VolumeSnapshot") - 3
    assert 2 <= tries <= 8  # the in-freeze budget stopped the binding's retries (6 + a last plain try at most)
    assert storpool_api.FREEZE_RETRY_S < 10  # below the default freeze deadline (config freeze_timeout_s)


def test_config_without_a_token_or_unreadable_is_a_named_config_error(tmp_path):
    conf = tmp_path / "storpool.conf"
    conf.write_text("SP_API_HTTP_HOST=127.0.0.1\nSP_API_HTTP_PORT=81\n")
    with pytest.raises(InvalidInput, match="SP_AUTH_TOKEN is missing"):
        load_endpoint(StorPoolSettings(conf=conf), env={})
    with pytest.raises(InvalidInput, match=r"\[storpool\]: no API token"):
        load_endpoint(StorPoolSettings(host="10.0.0.1", token_env="NOPE"), env={})
    conf.write_text("SP_API_HTTP_HOST=127.0.0.1\nSP_API_HTTP_PORT=81\nSP_AUTH_TOKEN=x\n")
    conf.chmod(0)
    import os
    if os.geteuid() != 0:  # root reads any file
        with pytest.raises(InvalidInput, match="cannot read it"):
            load_endpoint(StorPoolSettings(conf=conf), env={})


def test_a_storpool_disk_without_storpool_configured_gets_a_hint(fake, driver):
    from kvmkit.snapshot.drivers.file import FileDriver

    disk = Disk("vda", "file", "raw", "/dev/storpool/vol-a")
    with pytest.raises(InvalidInput, match="is a StorPool volume, but StorPool is not configured"):
        driver_for(disk, [FileDriver(Settings().libvirt_uri)])
    assert driver_for(disk, [FileDriver(Settings().libvirt_uri), driver]) is driver


def test_a_call_done_but_its_answer_lost_is_retried_and_the_made_snapshot_kept(fake, driver):
    """A management failover between doing VolumeSnapshot and answering it: the binding retries, the retry finds the
    name taken, and the driver recognises the snapshot by its tags instead of failing the freeze."""
    _vol, disk = cs_volume(fake, "vda")
    fake.lose_answer("VolumeSnapshot")
    made = driver.snapshot(driver.plan(disk, "s1", OPTS))
    assert fake.count("VolumeSnapshot") == 2 and made.location["snapshot_id"] == fake.snapshots[made.handle].global_id
    disks = [cs_volume(fake, t)[1] for t in ("vdb", "vdc")]
    planned = [driver.plan(d, "g1", OPTS) for d in disks]
    fake.lose_answer("VolumesGroupSnapshot")
    group = driver.group_snapshot(planned, "vm25-5f0c3a52", "g1")
    assert fake.count("VolumesGroupSnapshot") == 2
    assert [d.location["snapshot_id"] for d in group] == [fake.snapshots[d.handle].global_id for d in group]


def test_a_name_someone_else_took_meanwhile_is_not_mistaken_for_ours(fake, driver):
    _vol, disk = cs_volume(fake, "vda")
    planned = driver.plan(disk, "s1", OPTS)
    client = spapi.Api(host=fake.host, port=fake.port, auth=fake.token, transientRetries=0)
    client.snapshotCreate("~" + planned.location["volume_id"], {"name": planned.handle, "tags": {"theirs": "1"}})
    with pytest.raises(OperationFailed, match="fake-nameTaken"):
        driver.snapshot(planned)


def test_multi_cluster_paths_when_the_config_asks_for_them(fake, tmp_path):
    conf = fake.write_conf(tmp_path / "storpool.conf", our_id=True)
    for multi, want in ((False, 0), (True, 1)):
        ep = load_endpoint(StorPoolSettings(conf=conf, multi_cluster=multi), env={})
        assert ep.client_id == fake.client_id
        _vol, disk = cs_volume(fake, "vda")
        before = fake.multicluster_calls
        StorPoolDriver(ep).snapshot(StorPoolDriver(ep).plan(disk, f"m{int(multi)}", OPTS))
        assert (fake.multicluster_calls - before > 0) == bool(want)
