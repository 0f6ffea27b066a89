"""One test per behaviour of the FAKE StorPool API (kvmkit.benchmarks.storpool_fake), each driven through StorPool's
own binding (`storpool.spapi.Api`) or raw HTTP the way CloudStack's StorPoolUtil sends it. Offline: volumes are plain
files (devices=False). Each behaviour's public source is cited beside it in cluster.py."""

from __future__ import annotations

import json
import urllib.request

import pytest
from storpool import spapi

from kvmkit.benchmarks.storpool_fake import NAME_AND_TAGS_BYTES, FakeStorPoolApi, name_and_tags_bytes

MIB = 1 << 20


@pytest.fixture()
def fake(tmp_path):
    api = FakeStorPoolApi(tmp_path / "fake-storpool", devices=False, require_reflink=False,
                          cluster_id="fake.c").start()
    yield api
    api.stop()


def client(fake: FakeStorPoolApi, **kw) -> spapi.Api:
    return spapi.Api(host=fake.host, port=fake.port, auth=fake.token, **{"transientRetries": 0, **kw})


def raw_post(fake: FakeStorPoolApi, path: str, body: object) -> dict:
    """What CloudStack's StorPoolUtil sends (Java, not the binding: it may send "name": "")."""
    req = urllib.request.Request(f"http://{fake.host}:{fake.port}/ctrl/1.0/{path}", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Storpool v1:{fake.token}"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def test_an_unnamed_volume_is_addressed_only_by_its_global_id(fake):
    made = raw_post(fake, "MultiCluster/VolumeCreate", {"name": "", "size": 4 * MIB, "tags": {"cs": "volume"}})
    name, gid = made["data"]["name"], made["data"]["globalId"]
    assert name == "~" + gid  # CloudStack's getNameFromResponse strips this "~"
    c = client(fake)
    assert c.volumeList(name)[0].globalId == gid and c.volumeList(name)[0].tags == {"cs": "volume"}
    assert [v.name for v in c.volumesList()] == [name]
    with pytest.raises(spapi.ApiError) as err:
        c.volumeList(gid.replace(".", "-"))  # no name to find it by
    assert err.value.name == "objectDoesNotExist"


def test_an_anonymous_snapshot_is_addressed_by_its_snapshot_global_id(fake):
    vol = fake.make_volume("", 4 * MIB)
    made = raw_post(fake, f"VolumeSnapshot/~{vol.global_id}", {"name": "", "tags": {"cs": "snapshot"}})["data"]
    snap = client(fake).snapshotList("~" + made["snapshotGlobalId"])[0]
    assert snap.autoName and snap.tags == {"cs": "snapshot"} and snap.onVolume == "~" + vol.global_id


def test_revert_is_refused_while_the_volume_is_attached_and_done_once_detached(fake):
    vol = fake.make_volume("v1", 4 * MIB)
    c = client(fake)
    c.snapshotCreate("v1", {"name": "s1"})
    with pytest.raises(spapi.ApiError) as err:
        c.volumeRevert("v1", {"toSnapshot": "s1"})
    assert err.value.name.startswith("fake-") and "attached" in err.value.desc
    c.volumesReassign(json=[{"volume": "v1", "detach": "all"}])
    assert vol.attached == {} and c.attachmentsList() == []
    c.volumeRevert("v1", {"toSnapshot": "s1"})


def test_snapshot_delete_is_refused_while_attached(fake):
    fake.make_volume("v1", 4 * MIB)
    c = client(fake)
    c.snapshotCreate("v1", {"name": "s1"})
    c.volumesReassign(json=[{"snapshot": "s1", "ro": [7]}])
    assert [(a.volume, a.client, a.rights, a.snapshot) for a in c.attachmentsList() if a.snapshot] == [
        ("s1", 7, "ro", True)]
    with pytest.raises(spapi.ApiError, match="attached"):
        c.snapshotDelete("s1")
    c.volumesReassign(json=[{"snapshot": "s1", "detach": "all"}])
    c.snapshotDelete("s1")
    assert "s1" not in fake.snapshots


def test_volume_delete_is_refused_while_attached(fake):
    fake.make_volume("v1", 4 * MIB)
    c = client(fake)
    with pytest.raises(spapi.ApiError, match="attached"):
        c.volumeDelete("v1")
    c.volumesReassign(json=[{"volume": "v1", "detach": [1]}])
    c.volumeDelete("v1")
    assert not fake.volumes


def test_name_and_tags_over_200_bytes_are_refused(fake):
    fake.make_volume("v1", 4 * MIB)
    c = client(fake)
    name = "s" * 100
    fits = {"k" * 40: "v" * (NAME_AND_TAGS_BYTES - 100 - 40)}
    assert name_and_tags_bytes(name, fits) == NAME_AND_TAGS_BYTES
    c.snapshotCreate("v1", {"name": name, "tags": fits})
    with pytest.raises(spapi.ApiError, match="201 bytes"):
        c.snapshotCreate("v1", {"name": name + "x", "tags": fits})
    with pytest.raises(spapi.ApiError, match="bytes"):  # a group member too: nothing of the group is made
        c.snapshotCreateGroup({"volumes": [{"volume": "v1", "name": "g-ok"},
                                           {"volume": "v1", "name": "g" * 150, "tags": {"a": "b" * 60}}]})
    assert "g-ok" not in fake.snapshots and name + "x" not in fake.snapshots


def test_a_snapshot_with_children_is_deleted_later_and_listed_deleted_meanwhile(fake):
    fake.make_volume("v1", 4 * MIB)
    c = client(fake)
    c.snapshotCreate("v1", {"name": "base"})
    c.volumeCreate({"name": "clone", "parent": "base"})
    c.snapshotDelete("base")  # allowed
    listed = {s.name: s for s in c.snapshotsList()}
    assert listed["base"].deleted
    with pytest.raises(spapi.ApiError):  # no longer usable
        c.volumeCreate({"name": "clone2", "parent": "base"})
    c.volumesReassign(json=[{"volume": "clone", "detach": "all"}])
    c.volumeDelete("clone")
    assert "base" not in {s.name for s in c.snapshotsList()}


def test_transient_errors_on_demand_are_retried_by_the_binding(fake):
    fake.make_volume("v1", 4 * MIB)
    fake.fail_next("VolumeSnapshot", 2)
    with pytest.raises(spapi.ApiError) as err:
        client(fake).snapshotCreate("v1", {"name": "s1"})
    assert err.value.transient and "s1" not in fake.snapshots
    retrying = client(fake, transientRetries=3, transientSleep=lambda _r: 0.01)
    retrying.snapshotCreate("v1", {"name": "s1"})  # the second injected failure, then success
    assert "s1" in fake.snapshots and fake.count("VolumeSnapshot") == 3


def test_error_names_are_storpools_only_where_confirmed(fake):
    c = client(fake)
    with pytest.raises(spapi.ApiError) as missing:
        c.volumeList("nothing-here")
    assert missing.value.name == "objectDoesNotExist"
    fake.make_volume("v1", 4 * MIB)
    with pytest.raises(spapi.ApiError) as taken:
        c.volumeCreate({"name": "v1", "size": MIB})
    assert taken.value.name.startswith("fake-")  # StorPool's own name for this is not published


def test_a_wrong_token_is_a_401(fake):
    with pytest.raises(spapi.ApiError) as err:
        spapi.Api(host=fake.host, port=fake.port, auth="wrong", transientRetries=0).volumesList()
    assert err.value.status == 401


def test_detaching_needs_no_force_when_nothing_holds_it_open_and_all_means_every_client(fake):
    vol = fake.make_volume("v1", 4 * MIB)
    c = client(fake)
    c.volumesReassign(json=[{"volume": "v1", "rw": [2], "ro": [3]}])
    assert vol.attached == {1: "rw", 2: "rw", 3: "ro"}
    with pytest.raises(spapi.ApiError):
        c.volumesReassign(json=[{"snapshot": "v1", "rw": [1]}])  # not a snapshot, and snapshots are read-only
    c.volumesReassign(json=[{"volume": "v1", "detach": "all"}])
    assert vol.attached == {}
