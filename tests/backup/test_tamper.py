"""The tamper suite on a directory target (issue 23): whoever can write the repository flips, swaps, renames and
replays what is there; verify and restore refuse with one line and the exit code of damaged input, and nothing is
written. Run on an encrypted (repokey) repository and on an unencrypted one (manifests MACed by a host key)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.backup import codec, restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.targets import open_target
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import InvalidInput, KvmkitError, OperationFailed
from tests.backup.conftest import TEST_URI, MiB, file_snapshot, later, randbytes, sha, sparse_file

KVMKIT = [str(Path(sys.executable).parent / "kvmkit")]
DAMAGED = 6  # OperationFailed: kvmkit/cli.py's exit code for damaged input found part-way


def make_settings(tmp_path: Path, mode: str, name: str = "t1", state: str = "state") -> Settings:
    (tmp_path / f"repo-{name}").mkdir(exist_ok=True)
    secret = tmp_path / "passphrase"
    if not secret.exists():
        secret.write_text("correct horse battery staple\n")
        secret.chmod(0o600)
    return Settings(state_dir=tmp_path / state, libvirt_uri=TEST_URI, backup_targets=[BackupTarget(
        name=name, path=tmp_path / f"repo-{name}", encryption=mode, passphrase_file=secret)])


def backed_up(tmp_path: Path, mode: str):
    settings = make_settings(tmp_path, mode)
    disk = sparse_file(tmp_path / "vda.raw", 6 * MiB, [(i * 2 * MiB, randbytes(MiB)) for i in range(3)])
    manifest = backup_snapshot(settings, file_snapshot("s1", {"vda": disk}))
    return settings, manifest, disk


@pytest.fixture(params=["repokey", "none"])
def keyed(tmp_path, request):
    return backed_up(tmp_path, request.param)


def repo(settings: Settings) -> Path:
    path = settings.backup_targets[0].path
    assert path is not None
    return path


def chunk_files(settings: Settings) -> list[Path]:
    return sorted(p for p in (repo(settings) / "chunks").rglob("*") if p.is_file())


def manifest_path(settings: Settings, manifest, snapshot: str | None = None) -> Path:
    return repo(settings) / "manifests" / manifest.vm_uuid / f"{snapshot or manifest.snapshot}.json"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def refused(settings: Settings, tmp_path: Path, snapshot: str = "s1") -> None:
    """verify and restore both fail with OperationFailed (exit 6) and restore writes nothing."""
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OperationFailed) as caught:
        report = restore.verify(settings, "vm1")
        if not report.ok:
            raise OperationFailed("verify reported damage")
    assert "\n" not in str(caught.value)
    with pytest.raises(OperationFailed) as caught:
        restore.restore(settings, "vm1", snapshot, to=[str(tmp_path / "restored.raw")])
    assert "\n" not in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_an_encrypted_repository_holds_no_plaintext_and_no_unkeyed_chunk_names(tmp_path):
    settings = make_settings(tmp_path, "repokey")
    marker = b"kvmkit-known-plaintext-" * 1000
    disk = sparse_file(tmp_path / "vda.raw", 2 * MiB, [(0, marker.ljust(MiB, b"z"))])
    backup_snapshot(settings, file_snapshot("s1", {"vda": disk}))
    names = {p.name for p in chunk_files(settings)}
    assert names and codec.chunk_id(disk.read_bytes()[:MiB]) not in names  # the owner cannot test for content
    for path in repo(settings).rglob("*"):
        if path.is_file():
            assert b"kvmkit-known-plaintext" not in path.read_bytes(), path
            assert b'"vm_uuid"' not in path.read_bytes(), path  # manifests are sealed too
    restore.restore(settings, "vm1", "s1", to=[str(tmp_path / "r.raw")])
    assert sha(tmp_path / "r.raw") == sha(disk)


@pytest.mark.parametrize("where", [0, 5, 40, 100, -17, -1])
def test_a_flipped_byte_in_any_chunk_is_refused(tmp_path, keyed, where):
    settings, _, _ = keyed
    for path in chunk_files(settings):
        saved = path.read_bytes()
        flip(path, where)
        refused(settings, tmp_path)
        path.write_bytes(saved)
    assert restore.verify(settings, "vm1").ok


@pytest.mark.parametrize("where", [0, 3, 7, 20, 200, -30, -1])
def test_a_flipped_byte_in_the_manifest_is_refused(tmp_path, keyed, where):
    settings, manifest, _ = keyed
    flip(manifest_path(settings, manifest), where)
    refused(settings, tmp_path)


def test_two_swapped_chunks_are_refused(tmp_path, keyed):
    settings, _, _ = keyed
    a, b = chunk_files(settings)[:2]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    refused(settings, tmp_path)


def test_a_renamed_moved_or_replayed_manifest_is_refused(tmp_path, keyed):
    settings, manifest, disk = keyed
    src = manifest_path(settings, manifest)
    backup_snapshot(settings, file_snapshot("s2", {"vda": disk}, when=later(file_snapshot("s1", {"vda": disk}))))
    s2 = manifest_path(settings, manifest, "s2")
    s2.write_bytes(src.read_bytes())  # s1's manifest replayed under s2's name
    refused(settings, tmp_path, "s2")
    s2.unlink()
    other = repo(settings) / "manifests" / "00000000-0000-4000-8000-000000000001"
    other.mkdir()
    shutil.copy(src, other / "s1.json")  # moved under another VM
    with pytest.raises(OperationFailed, match="damaged"):
        restore.verify(settings, "00000000-0000-4000-8000-000000000001")
    # a manifest of another repository (same VM, same snapshot, same mode) replayed into this one
    elsewhere = make_settings(tmp_path, settings.backup_targets[0].encryption or "none", name="t2", state="state2")
    backup_snapshot(elsewhere, file_snapshot("s1", {"vda": disk}))
    shutil.copy(manifest_path(elsewhere, manifest), src)
    refused(settings, tmp_path)


def test_a_dropped_content_digest_is_refused(tmp_path):
    settings = make_settings(tmp_path, "none")
    disk = sparse_file(tmp_path / "vda.raw", 4 * MiB, [(0, randbytes(MiB))])
    manifest = backup_snapshot(settings, file_snapshot("s1", {"vda": disk}))
    path = manifest_path(settings, manifest)
    blob = path.read_bytes()
    head, body = blob[:38], json.loads(blob[38:])
    body["disks"][0]["content_digest"] = None
    path.write_bytes(head + json.dumps(body).encode())
    refused(settings, tmp_path)


def test_another_host_key_is_refused(tmp_path):
    settings, _, _ = backed_up(tmp_path, "none")
    [host_key] = (settings.state_dir / "backup-keys").glob("*.mac")
    record = json.loads(host_key.read_text())
    record["mac_key"] = os.urandom(32).hex()
    host_key.write_text(json.dumps(record))
    refused(settings, tmp_path)


def test_a_wrong_passphrase_or_another_repositorys_key_is_refused(tmp_path):
    settings, _, _ = backed_up(tmp_path, "repokey")
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    bad = settings.model_copy(update={"backup_targets": [settings.backup_targets[0].model_copy(
        update={"passphrase_file": wrong})]})
    with pytest.raises(InvalidInput, match="wrong passphrase"):
        restore.verify(bad, "vm1")
    other = make_settings(tmp_path, "repokey", name="t2", state="state2")
    open_target(other)
    shutil.copy(repo(other) / "keys" / "repokey", repo(settings) / "keys" / "repokey")
    with pytest.raises(InvalidInput, match="a key of repository"):
        restore.verify(settings, "vm1")


def test_a_downgraded_marker_is_refused(tmp_path, keyed):
    settings, _, _ = keyed
    (repo(settings) / "kvmkit-backup.json").write_text(json.dumps({"format": 1, "tool": "kvmkit"}))
    with pytest.raises(InvalidInput, match="this host knew it as"):
        restore.verify(settings, "vm1")
    (repo(settings) / "kvmkit-backup.json").unlink()
    with pytest.raises(InvalidInput, match="format marker is gone"):
        restore.verify(settings, "vm1")


def test_the_cli_says_one_line_with_the_damaged_exit_code(tmp_path, keyed):
    settings, _, _ = keyed
    cfg = settings.backup_targets[0]
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{settings.state_dir}"\nlibvirt_uri = "{TEST_URI}"\n'
                      f'[[backup_targets]]\nname = "t1"\npath = "{cfg.path}"\n'
                      f'passphrase_file = "{cfg.passphrase_file}"\n')
    env = {**os.environ, "KVMKIT_CONFIG": str(config)}
    flip(chunk_files(settings)[0], 60)
    for argv in (["backup", "verify", "vm1"], ["backup", "restore", "vm1", "s1", "--to", str(tmp_path / "r.raw")]):
        out = subprocess.run(KVMKIT + argv, env=env, capture_output=True, text=True, timeout=120, cwd="/")
        assert out.returncode == DAMAGED, out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "r.raw").exists()


def test_an_unencrypted_target_needs_its_host_key(tmp_path):
    settings, _, _ = backed_up(tmp_path, "none")
    stranger = settings.model_copy(update={"state_dir": tmp_path / "other-host"})
    with pytest.raises(KvmkitError, match="this host has no key"):
        restore.verify(stranger, "vm1")
