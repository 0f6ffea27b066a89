"""Backups to an S3 bucket on the lab's radosgw: real Ceph, real boto3, no mocks. A running VM's file and RBD disks
backed up full and incremental and restored byte for byte; a corrupted and a deleted object; delete with
dependants and prune sweeping exactly the unneeded objects; a bucket over quota mid-backup; another host's lock;
bad keys, an unreachable endpoint and a missing bucket as one-line errors that change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmkit.backup import manage, restore
from kvmkit.backup.codec import chunk_id
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.retention import RetentionPolicy
from kvmkit.backup.targets import open_target
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import Conflict, EnvironmentProblem, OperationFailed
from kvmkit.lab import lab
from kvmkit.lab.disks import purge_rbd_image
from kvmkit.lab.rgw import RgwState
from kvmkit.lab.state import load
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.drivers.rbd_io import split_handle
from kvmkit.snapshot.engine import Engine
from kvmkit.virt import agent
from tests.backup.conftest import MiB, changed_bytes, file_snapshot, later, randbytes, sha, sparse_file
from tests.backup.test_backup_cli import kvmkit

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def rgw(lab_state) -> Iterator[RgwState]:
    yield lab.start_rgw(lab_state.dir)
    lab.stop_rgw(lab_state.dir)  # only this module needs it


@pytest.fixture(scope="module")
def client(rgw):
    """A plain boto3 client, to look at and damage what kvmkit stored."""
    import boto3
    from botocore.config import Config

    access_key, secret_key = rgw.keys()
    return boto3.session.Session().client("s3", endpoint_url=rgw.endpoint, aws_access_key_id=access_key,
                                          aws_secret_access_key=secret_key, region_name="us-east-1",
                                          config=Config(s3={"addressing_style": "path"}))


def objects(client, bucket: str) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def s3_target(rgw: RgwState, **changes: str) -> BackupTarget:
    access_key, secret_key = rgw.keys()
    return BackupTarget(**{"name": "s3", "kind": "s3", "endpoint": rgw.endpoint, "access_key": access_key,
                           "secret_key": secret_key, "gc_margin_s": 0, **changes})


@pytest.fixture()
def bucket(rgw, client) -> Iterator[str]:
    name = f"kvmkit-test-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(objects(client, name)) if name in {b["Name"] for b in client.list_buckets()["Buckets"]} else None
    if keys is not None:
        for start in range(0, len(keys), 1000):
            client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
        client.delete_bucket(Bucket=name)


@pytest.fixture()
def s3_settings(lab_state, rgw, bucket, tmp_path) -> Settings:
    settings = Settings(state_dir=tmp_path / "state", lab_dir=lab_state.dir, libvirt_uri=lab_state.uri,
                        backup_targets=[s3_target(rgw, bucket=bucket)])
    open_target(settings, create=True)  # what `kvmkit backup target init` does
    return settings


def rbd_sha(lab_state, handle: str) -> str:
    """sha256 of an RBD image (or snapshot: pool/image@snap), read through librbd."""
    import rados
    import rbd

    pool, image, snap = split_handle(handle)
    digest = hashlib.sha256()
    cluster = rados.Rados(conffile=str(load(lab_state.dir).ceph.conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image, snapshot=snap, read_only=True) as img:
            size = img.size()
            for offset in range(0, size, 4 * MiB):
                digest.update(img.read(offset, min(4 * MiB, size - offset)))
    finally:
        cluster.shutdown()
    return digest.hexdigest()


def test_vm_file_and_rbd_disks_back_up_incrementally_and_restore_byte_for_byte(s3_settings, lab_state, conn,
                                                                              client, bucket, tmp_path):
    vm = f"{lab_state.dir.name}1"  # the lab's VM: vda a reflink file, vdb an RBD image
    engine = Engine(uri=lab_state.uri, state_dir=s3_settings.state_dir, catalog=Catalog(s3_settings.catalog_path))
    dom = conn.lookupByName(vm)
    restored_rbd = None
    try:
        agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/s3a bs=64k count=96 2>/dev/null && dd if=/dev/urandom "
                               "of=/mnt/vdb/s3b bs=64k count=96 2>/dev/null && sync")
        s1 = engine.create(vm, "s3bk1")
        m1 = backup_snapshot(s3_settings, s1)
        assert m1.kind.value == "full" and {d.driver for d in m1.disks} == {"file", "rbd"}
        # new files and 1 MiB rewritten in place inside the old ones
        agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/s3c bs=64k count=64 2>/dev/null && dd if=/dev/urandom "
                               "of=/mnt/vdb/s3b bs=64k seek=20 count=16 conv=notrunc 2>/dev/null && sync")
        s2 = engine.create(vm, "s3bk2")
        m2 = backup_snapshot(s3_settings, s2)
        assert m2.kind.value == "incremental" and m2.parent == "s3bk1"
        file1, file2 = (next(d for d in s.disks if d.driver == "file") for s in (s1, s2))
        truth = changed_bytes(Path(file1.handle), Path(file2.handle))
        vda, vdb = (next(d for d in m2.disks if d.driver == kind) for kind in ("file", "rbd"))
        print(f"\ns3 incremental: file changed {truth} B, wrote {vda.written_bytes} B; rbd diff {vdb.diff_bytes} B, "
              f"wrote {vdb.written_bytes} B; {m2.seconds:.2f} s")
        assert vda.written_bytes <= 1.05 * truth and vdb.written_bytes <= 1.05 * vdb.diff_bytes

        stored = objects(client, bucket)  # the dir target's layout, as keys
        chunk_keys = [k for k in stored if k.startswith("chunks/")]
        assert all(k.split("/")[1] == k.split("/")[2][:2] and len(k.split("/")[2]) == 64 for k in chunk_keys)
        assert {k for k in stored if not k.startswith("chunks/")} == {
            "kvmkit-backup.json", f"manifests/{s1.vm_uuid}/s3bk1.json", f"manifests/{s1.vm_uuid}/s3bk2.json"}
        assert sum(stored[k] for k in chunk_keys) == m1.written_bytes + m2.written_bytes

        pool, image, _ = split_handle(vdb.source)
        restored_rbd = f"{pool}/{image}-s3restore"
        result = restore.restore(s3_settings, vm, "s3bk2", to=[f"vda={tmp_path / 'vda.raw'}", f"vdb={restored_rbd}"])
        assert sorted(d.destination for d in result.disks) == sorted([str(tmp_path / "vda.raw"), restored_rbd])
        assert sha(tmp_path / "vda.raw") == sha(Path(file2.handle))
        assert rbd_sha(lab_state, restored_rbd) == rbd_sha(lab_state, vdb.handle)
        assert restore.verify(s3_settings, vm).ok
    finally:
        if restored_rbd:
            purge_rbd_image(load(lab_state.dir).ceph.conf, *restored_rbd.split("/"))
        for name in ("s3bk2", "s3bk1"):
            if engine.catalog.find(dom.UUIDString(), name) is not None:
                engine.delete(vm, name)


def test_a_corrupted_or_deleted_object_is_named_by_verify_and_stops_restore(s3_settings, client, bucket, tmp_path):
    shared = randbytes(MiB)
    a = sparse_file(tmp_path / "a", 8 * MiB, [(0, shared), (4 * MiB, randbytes(MiB))])
    b = sparse_file(tmp_path / "b", 8 * MiB, [(2 * MiB, shared)])
    backup_snapshot(s3_settings, file_snapshot("s1", {"vda": a, "vdb": b}))
    digest = chunk_id(shared)
    key = f"chunks/{digest[:2]}/{digest}"
    blob = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    blob[len(blob) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(blob))

    report = restore.verify(s3_settings, "vm1")
    assert [(d.chunk, d.problem, d.disks) for d in report.damaged] == [
        (digest, "hash mismatch (content changed on the target)", ["s1:vda", "s1:vdb"])]
    with pytest.raises(OperationFailed, match=f"chunk {digest} is damaged .* needed by disk\\(s\\) s1:vda, s1:vdb; "
                                              "nothing was restored"):
        restore.restore(s3_settings, "vm1", "s1", to=[f"vda={tmp_path / 'ra'}", f"vdb={tmp_path / 'rb'}"])
    assert not list(tmp_path.glob("r*"))
    client.delete_object(Bucket=bucket, Key=key)
    assert [(d.chunk, d.problem) for d in restore.verify(s3_settings, "vm1").damaged] == [(digest, "missing")]


def test_delete_with_dependants_and_prune_remove_exactly_the_unneeded_objects(s3_settings, client, bucket, tmp_path):
    snaps, files = [], []
    for i in range(4):
        f = sparse_file(tmp_path / f"a{i}", 4 * MiB, [(0, randbytes(MiB)), (MiB, bytes([i + 1]) * 10)])
        snaps.append(file_snapshot(f"s{i}", {"vda": f}, when=later(snaps[-1]) if snaps else None))
        files.append(f)
        assert backup_snapshot(s3_settings, snaps[-1]).kind.value == ("full" if i == 0 else "incremental")
    with pytest.raises(Conflict, match="base of incremental backup\\(s\\) s1, s2, s3; pass --with-dependants"):
        manage.delete(s3_settings, "vm1", "s0")
    before = objects(client, bucket)
    removal = manage.prune(s3_settings, "vm1", RetentionPolicy(keep_last=2))
    assert removal.deleted == ["s1", "s0"] and removal.rebased == ["s2"]
    # s0's and s1's random MiB go; their second chunks stay: s2's second chunk is a delta on s1's, s1's on s0's
    gone = set(before) - set(objects(client, bucket))
    assert removal.chunks_removed == 2 and len([k for k in gone if k.startswith("chunks/")]) == 2
    assert removal.bytes_freed == sum(before[k] for k in gone if k.startswith("chunks/"))
    assert restore.verify(s3_settings, "vm1").ok
    restore.restore(s3_settings, "vm1", "s3", to=[str(tmp_path / "r3")])
    assert sha(tmp_path / "r3") == sha(files[3])

    removal = manage.delete(s3_settings, "vm1", "s2", with_dependants=True)
    assert removal.deleted == ["s3", "s2"]
    left = set(objects(client, bucket))  # every chunk, manifest and intent is gone; each delete left its tombstone
    tombs = {k for k in left if k.startswith(f"tombstones/{snaps[0].vm_uuid}/")}
    assert left - tombs == {"kvmkit-backup.json"} and len(tombs) == 4 and all(objects(client, bucket)[k] == 0
                                                                                 for k in tombs)


def test_bucket_over_quota_mid_backup_is_one_line_and_the_rerun_resumes(s3_settings, lab_state, client, bucket,
                                                                       tmp_path):
    conf = str(load(lab_state.dir).ceph.conf)

    def quota(*args: str) -> None:
        subprocess.run(["radosgw-admin", "-c", conf, "quota", *args, "--quota-scope=bucket", f"--bucket={bucket}"],
                       check=True, capture_output=True, timeout=60)
    quota("set", "--max-size=3145728")  # 3 MiB: the backup below needs 6
    quota("enable")
    a = sparse_file(tmp_path / "a", 8 * MiB, [(0, randbytes(6 * MiB))])
    with pytest.raises(OperationFailed, match=r"backup target s3 is full \(QuotaExceeded\) writing [0-9a-f]{64}; the "
                                              "backup is not recorded, a rerun after freeing space resumes it"):
        backup_snapshot(s3_settings, file_snapshot("s1", {"vda": a}))
    assert manage.list_backups(s3_settings)[0] == [] and "lock" not in objects(client, bucket)
    stored = [k for k in objects(client, bucket) if k.startswith("chunks/")]
    quota("disable")
    m = backup_snapshot(s3_settings, file_snapshot("s1", {"vda": a}))
    assert 0 < len(stored) < 6 and m.disks[0].new_chunks == 6 - len(stored)  # resumed: nothing written twice
    assert restore.verify(s3_settings, "vm1").ok


def test_another_hosts_lock_object_keeps_prunes_apart_never_backups_and_expires(s3_settings, client, bucket,
                                                                                tmp_path):
    """Issue 23: backups announce themselves with leases and never wait on a prune; a prune's `lock` object only
    keeps other hosts' prunes apart, and a killed prune's record (dead pid here, or older than 30 min) is stale."""
    import time

    a = sparse_file(tmp_path / "a", 2 * MiB, [(0, randbytes(MiB))])
    fresh = {"host": "elsewhere", "pid": 4242, "epoch": time.time(), "since": "2026-11-29T10:00:00"}
    client.put_object(Bucket=bucket, Key="lock", Body=json.dumps(fresh).encode())
    message = ("backup target s3 is locked by a prune on elsewhere \\(pid 4242\\) since 2026-11-29T10:00:00; if that "
               f"process is gone, delete object 'lock' from bucket {bucket}")
    backup_snapshot(s3_settings, file_snapshot("s1", {"vda": a}))  # a backup does not wait on a prune
    with pytest.raises(EnvironmentProblem, match=message):
        manage.prune(s3_settings, "vm1", RetentionPolicy(keep_last=1))
    assert json.loads(client.get_object(Bucket=bucket, Key="lock")["Body"].read())["host"] == "elsewhere"
    old = {"host": "elsewhere", "pid": 4242, "epoch": time.time() - 3600, "since": "old"}
    client.put_object(Bucket=bucket, Key="lock", Body=json.dumps(old).encode())
    assert manage.prune(s3_settings, "vm1", RetentionPolicy(keep_last=1)).deleted == []  # expired: taken over
    gone = subprocess.Popen(["true"])
    gone.wait()
    client.put_object(Bucket=bucket, Key="lock", Body=json.dumps({"host": os.uname().nodename, "pid": gone.pid,
                                                                  "since": "2026-11-29T10:00:00"}).encode())
    assert manage.prune(s3_settings, "vm1", RetentionPolicy(keep_last=1)).deleted == []  # a dead local prune
    assert "lock" not in objects(client, bucket)  # the prune took the stale lock over and released it


@pytest.mark.parametrize(("change", "code", "message"), [
    ({"secret_key": "not-the-secret"}, 2, "refused access to bucket {bucket} (SignatureDoesNotMatch)"),
    ({"access_key": "NOSUCHKEY0000000000"}, 2, "refused access to bucket {bucket} (InvalidAccessKeyId)"),
    ({"endpoint": "http://127.0.0.1:1"}, 5, "backup target s3: cannot talk to http://127.0.0.1:1 reading "
                                            "kvmkit-backup.json (Could not connect to the endpoint URL"),
    ({"bucket": "kvmkit-test-no-such-bucket"}, 3, "bucket kvmkit-test-no-such-bucket does not exist on {endpoint}; "
                                                  "`kvmkit backup target init s3` makes it"),
])
def test_bad_keys_unreachable_endpoint_missing_bucket_are_one_line_and_change_nothing(
        s3_settings, rgw, client, bucket, tmp_path, change, code, message):
    a = sparse_file(tmp_path / "a", 2 * MiB, [(0, randbytes(MiB))])
    backup_snapshot(s3_settings, file_snapshot("s1", {"vda": a}))
    target = s3_target(rgw, **{"bucket": bucket, **change})
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[backup_targets]]\n'
                      + "".join(f'{k} = "{v}"\n' for k, v in target.model_dump(exclude_none=True).items()))
    config.chmod(0o600)  # it holds the S3 secret: kvmkit refuses it readable by others
    env = {**os.environ, "KVMKIT_CONFIG": str(config)}
    before = objects(client, bucket)
    secrets = [v for k, v in target.model_dump().items() if k.endswith("_key") and v]
    for args in (["backup", "list"], ["backup", "delete", "vm1", "s1"], ["backup", "prune", "vm1", "--keep-last", "1"]):
        out = kvmkit(env, *args)
        assert out.returncode == code, out.stderr
        assert message.format(bucket=bucket, endpoint=rgw.endpoint) in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert not any(s in out.stderr + out.stdout for s in secrets)
    assert objects(client, bucket) == before
    assert [m.snapshot for m in manage.list_backups(s3_settings)[0]] == ["s1"]


def test_target_init_makes_the_bucket_once_and_lab_status_shows_the_gateway(lab_state, rgw, client, bucket, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[backup_targets]]\n'
                      + "".join(f'{k} = "{v}"\n' for k, v in s3_target(rgw, bucket=bucket).model_dump(exclude_none=True)
                                .items()))
    config.chmod(0o600)  # it holds the S3 secret: kvmkit refuses it readable by others
    env = {**os.environ, "KVMKIT_CONFIG": str(config), "KVMKIT_LAB_DIR": str(lab_state.dir)}
    for _ in range(2):
        out = kvmkit(env, "backup", "target", "init", "--encryption", "none")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"backup target s3: ready (bucket {bucket} on {rgw.endpoint}), encryption none")
    assert set(objects(client, bucket)) == {"kvmkit-backup.json"}  # mode none: the MAC key stays on the host
    status = json.loads(kvmkit(env, "lab", "status", "--json").stdout)
    assert status["rgw"] == {"endpoint": rgw.endpoint, "running": True, "credentials": str(rgw.credentials)}
    assert rgw.credentials.stat().st_mode & 0o777 == 0o600
