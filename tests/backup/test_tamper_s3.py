"""The tamper suite on an S3 bucket (the lab's radosgw, real boto3): objects flipped, swapped, replayed under
another name, or opened with the wrong passphrase; verify and restore refuse with one line, exit code of damaged
input, nothing written (issue 23)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.backup import restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.targets import open_target
from kvmkit.config import Settings
from kvmkit.errors import InvalidInput, OperationFailed
from tests.backup.conftest import MiB, file_snapshot, later, randbytes, sparse_file
from tests.backup.test_backup_s3 import bucket, client, objects, rgw, s3_target  # noqa: F401 - fixtures

pytestmark = pytest.mark.lab
KVMKIT = [str(Path(sys.executable).parent / "kvmkit")]


@pytest.fixture()
def sealed(lab_state, rgw, bucket, tmp_path):  # noqa: F811 - pytest fixtures by name
    secret = tmp_path / "passphrase"
    secret.write_text("s3 tamper passphrase\n")
    secret.chmod(0o600)
    settings = Settings(state_dir=tmp_path / "state", lab_dir=lab_state.dir, libvirt_uri=lab_state.uri,
                        backup_targets=[s3_target(rgw, bucket=bucket, encryption="repokey",
                                                  passphrase_file=str(secret))])
    open_target(settings, create=True, init="repokey")
    disk = sparse_file(tmp_path / "vda.raw", 6 * MiB, [(i * 2 * MiB, randbytes(MiB)) for i in range(3)])
    first = file_snapshot("s1", {"vda": disk})
    manifest = backup_snapshot(settings, first)
    return settings, manifest, disk, first


def get(client, bucket, key) -> bytes:  # noqa: F811
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def put(client, bucket, key, data: bytes) -> None:  # noqa: F811
    client.put_object(Bucket=bucket, Key=key, Body=data)


def refused(settings, tmp_path: Path, snapshot: str = "s1") -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OperationFailed) as caught:
        if not restore.verify(settings, "vm1").ok:
            raise OperationFailed("verify reported damage")
    assert "\n" not in str(caught.value)
    with pytest.raises(OperationFailed) as caught:
        restore.restore(settings, "vm1", snapshot, to=[str(tmp_path / "restored.raw")])
    assert "\n" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_flipped_swapped_and_replayed_objects_are_refused(sealed, client, bucket, tmp_path):  # noqa: F811
    settings, manifest, disk, first = sealed
    chunks = sorted(k for k in objects(client, bucket) if k.startswith("chunks/"))
    mkey = f"manifests/{manifest.vm_uuid}/s1.json"
    for key in [*chunks, mkey]:
        saved = get(client, bucket, key)
        for where in (0, 7, len(saved) // 2, len(saved) - 1):
            flipped = bytearray(saved)
            flipped[where] ^= 0x20
            put(client, bucket, key, bytes(flipped))
            refused(settings, tmp_path)
        put(client, bucket, key, saved)
    a, b = chunks[:2]
    blob_a, blob_b = get(client, bucket, a), get(client, bucket, b)
    put(client, bucket, a, blob_b)
    put(client, bucket, b, blob_a)
    refused(settings, tmp_path)
    put(client, bucket, a, blob_a)
    put(client, bucket, b, blob_b)
    assert restore.verify(settings, "vm1").ok
    backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(first)))
    put(client, bucket, f"manifests/{manifest.vm_uuid}/s2.json", get(client, bucket, mkey))  # s1 replayed as s2
    refused(settings, tmp_path, "s2")


def test_the_wrong_passphrase_is_one_line_and_changes_nothing(sealed, client, bucket, tmp_path):  # noqa: F811
    settings, _, _, _ = sealed
    before = objects(client, bucket)
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    bad = settings.model_copy(update={"backup_targets": [settings.backup_targets[0].model_copy(
        update={"passphrase_file": wrong})]})
    with pytest.raises(InvalidInput, match="wrong passphrase"):
        restore.verify(bad, "vm1")
    assert objects(client, bucket) == before
    config = tmp_path / "config.toml"
    cfg = bad.backup_targets[0]
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[backup_targets]]\n' + "".join(
        f'{k} = "{v}"\n' for k, v in cfg.model_dump(exclude_none=True, mode="json").items()))
    config.chmod(0o600)  # it holds the S3 secret: kvmkit refuses it readable by others
    out = subprocess.run([*KVMKIT, "backup", "verify", "vm1"], env={**os.environ, "KVMKIT_CONFIG": str(config)},
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "wrong passphrase" in out.stderr, out.stderr


@pytest.mark.timeout(1500)  # 60 s of soak on radosgw, then every backup verified and restored (took > 600 s in CI)
def test_a_short_fleet_soak_on_radosgw_loses_nothing(lab_state, rgw, bucket, tmp_path):  # noqa: F811
    from tests.backup.test_soak import run_soak, soak_config

    access_key, secret_key = rgw.keys()
    env = soak_config(tmp_path, f'kind = "s3"\nendpoint = "{rgw.endpoint}"\nbucket = "{bucket}"\n'
                                f'access_key = "{access_key}"\nsecret_key = "{secret_key}"\n')
    result = run_soak(env, tmp_path / "run", 60)
    assert result["backups"] > 0 and result["kills"] > 0 and result["checked"] > 0
