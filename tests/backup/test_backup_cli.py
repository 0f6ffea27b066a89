"""The CLI as mounted (`kvmkit backup …`, `kvmkit schedule …`), in a real process with a real config:
--json output, one-line errors with the documented exit codes, private state files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.backup.create import backup_snapshot
from kvmkit.config import BackupTarget, Settings
from tests.backup.conftest import TEST_URI, MiB, file_snapshot, later, randbytes, sparse_file


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "target").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nlibvirt_uri = "{TEST_URI}"\n'
                      f'[[backup_targets]]\nname = "nfs1"\npath = "{tmp_path / "target"}"\n'
                      f'[[backup_targets]]\nname = "s3"\nkind = "s3"\nbucket = "b"\nsecret_key = "TOPSECRET"\n')
    config.chmod(0o600)  # it holds a secret: kvmkit refuses it readable by others
    return {**os.environ, "KVMKIT_CONFIG": str(config)}


def state_of(root: Path) -> list[str]:
    """Every path under root but the job logs (a refused command logs its refusal) and the target's prune lock
    file (made empty by the first delete or prune that takes it): nothing else changes."""
    return sorted(str(p) for p in root.rglob("*") if "log" not in p.relative_to(root).parts[1:2]
                  and p.relative_to(root).parts != ("target", "lock"))


def kvmkit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])


def two_backups(tmp_path: Path) -> Settings:
    settings = Settings(state_dir=tmp_path / "state",
                        backup_targets=[BackupTarget(name="nfs1", path=tmp_path / "target")])
    a = sparse_file(tmp_path / "a", 4 * MiB, [(0, randbytes(MiB))])
    s1 = file_snapshot("s1", {"vda": a})
    backup_snapshot(settings, s1, "nfs1")
    b = sparse_file(tmp_path / "b", 4 * MiB, [(0, randbytes(MiB))])
    backup_snapshot(settings, file_snapshot("s2", {"vda": b}, when=later(s1)), "nfs1")
    return settings


def test_list_verify_prune_json(env, tmp_path):
    two_backups(tmp_path)
    out = kvmkit(env, "backup", "list", "vm1", "--target", "nfs1", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [(b["snapshot"], b["kind"], b["parent"]) for b in listed] == [("s1", "full", None),
                                                                         ("s2", "incremental", "s1")]
    assert all("chunks" not in d for b in listed for d in b["disks"])
    out = kvmkit(env, "backup", "verify", "vm1", "-t", "nfs1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True
    out = kvmkit(env, "backup", "prune", "vm1", "-t", "nfs1", "--keep-last", "1", "--dry-run", "--json")
    assert json.loads(out.stdout)["deleted"] == ["s1"]
    assert len(json.loads(kvmkit(env, "backup", "list", "-t", "nfs1", "--json").stdout)) == 2


def test_prune_and_delete_with_dependants_need_yes_without_a_terminal_and_change_nothing_until_then(env, tmp_path):
    two_backups(tmp_path)

    def listed() -> list[str]:
        return [b["snapshot"] for b in json.loads(kvmkit(env, "backup", "list", "-t", "nfs1", "--json").stdout)]

    for args in (["backup", "prune", "vm1", "-t", "nfs1", "--keep-last", "1"],
                 ["backup", "delete", "vm1", "s1", "-t", "nfs1", "--with-dependants"]):
        out = kvmkit(env, *args)
        assert out.returncode == 2 and "pass --yes" in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert listed() == ["s1", "s2"]
    out = kvmkit(env, "backup", "delete", "vm1", "s1", "-t", "nfs1", "--with-dependants", "--dry-run", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["deleted"] == ["s2", "s1"]
    assert listed() == ["s1", "s2"]
    out = kvmkit(env, "backup", "prune", "vm1", "-t", "nfs1", "--keep-last", "1", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["deleted"] == ["s1"] and listed() == ["s2"]
    out = kvmkit(env, "backup", "delete", "vm1", "s2", "-t", "nfs1", "--json")  # one backup, nothing else: no ask
    assert out.returncode == 0 and json.loads(out.stdout)["deleted"] == ["s2"], out.stderr


def test_list_json_names_the_disk_disk_and_times_carry_their_zone(env, tmp_path):
    from datetime import datetime

    two_backups(tmp_path)
    listed = json.loads(kvmkit(env, "backup", "list", "vm1", "-t", "nfs1", "--json").stdout)
    for backup in listed:
        assert [d["disk"] for d in backup["disks"]] == ["vda"] and all("target" not in d for d in backup["disks"])
        for key in ("created", "snapshot_created"):
            assert datetime.fromisoformat(backup[key]).tzinfo is not None, backup[key]


def test_restore_by_cli_writes_the_disk(env, tmp_path):
    two_backups(tmp_path)
    out = kvmkit(env, "backup", "restore", "vm1", "s2", "-t", "nfs1", "--to", str(tmp_path / "r"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["disks"][0]["destination"] == str(tmp_path / "r")
    assert (tmp_path / "r").read_bytes() == (tmp_path / "b").read_bytes()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["backup", "list"], 2, "several backup targets are configured (nfs1, s3): name one with --target"),
    (["backup", "list", "-t", "nope"], 3, "no backup target named 'nope'"),
    (["backup", "list", "-t", "s3"], 2, "backup target s3: kind s3 needs endpoint and bucket"),
    (["backup", "verify", "ghost", "-t", "nfs1"], 3, "VM ghost has no backups on target nfs1"),
    (["backup", "delete", "vm1", "s1", "-t", "nfs1"], 4, "pass --with-dependants"),
    (["backup", "restore", "vm1", "s1", "-t", "nfs1", "--to", "vdq=/tmp/x"], 2, "has no disk 'vdq'"),
    (["backup", "prune", "vm1", "-t", "nfs1"], 2, "give at least one --keep-* rule"),
    (["backup", "prune", "vm1", "-t", "nfs1", "--keep-last", "-1"], 2, "--keep-last must be"),
    (["schedule", "add", "vm1", "--every", "5x", "--keep-last", "3"], 2, "--every '5x'"),
    (["schedule", "add", "vm1", "--every", "1h"], 2, "give at least one of --keep-last"),
    (["schedule", "remove", "vm1"], 3, "VM vm1 has no schedule"),
])
def test_bad_input_is_one_line_with_its_exit_code_and_changes_nothing(env, tmp_path, args, code, message):
    two_backups(tmp_path)
    before = state_of(tmp_path)
    out = kvmkit(env, *args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "TOPSECRET" not in out.stderr + out.stdout
    assert state_of(tmp_path) == before


def test_verify_exit_code_and_message_name_the_damaged_chunk(env, tmp_path):
    two_backups(tmp_path)
    chunk = next(p for p in (tmp_path / "target" / "chunks").rglob("*") if p.is_file())
    chunk.write_bytes(b"KVB1\x00garbage")
    out = kvmkit(env, "backup", "verify", "vm1", "-t", "nfs1")
    assert out.returncode == 6
    assert f"chunk {chunk.name} (hash mismatch" in out.stderr and "needed by s" in out.stderr
    assert chunk.name in out.stdout  # the table of damaged chunks
