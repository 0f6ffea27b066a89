"""Keys from the command line (issue 23 item 1): `target init --encryption keyfile`, the key only on the host
(0600); another host cannot open the repository until `key import` of an exported copy; `key passwd` re-wraps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kvmkit.backup import restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.config import BackupTarget, Settings
from tests.backup.conftest import TEST_URI, MiB, file_snapshot, randbytes, sha, sparse_file

KVMKIT = [str(Path(sys.executable).parent / "kvmkit")]


def host(tmp_path: Path, name: str, secret: Path) -> tuple[Settings, dict[str, str]]:
    state, repo = tmp_path / name, tmp_path / "repo"
    config = tmp_path / f"{name}.toml"
    config.write_text(f'state_dir = "{state}"\nlibvirt_uri = "{TEST_URI}"\n'
                      f'[[backup_targets]]\nname = "k1"\npath = "{repo}"\n'
                      f'passphrase_file = "{secret}"\ngc_margin_s = 0\n')
    target = BackupTarget(name="k1", path=repo, passphrase_file=secret, gc_margin_s=0)
    settings = Settings(state_dir=state, libvirt_uri=TEST_URI, backup_targets=[target])
    return settings, {**os.environ, "KVMKIT_CONFIG": str(config)}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KVMKIT, *args], env=env, capture_output=True, text=True, timeout=120, cwd="/")


def test_a_keyfile_target_opens_only_where_its_key_was_imported(tmp_path):
    (tmp_path / "repo").mkdir()
    secret = tmp_path / "pass"
    secret.write_text("first passphrase\n")
    secret.chmod(0o600)
    a, env_a = host(tmp_path, "host-a", secret)
    b, env_b = host(tmp_path, "host-b", secret)
    out = cli(env_a, "backup", "target", "init", "--encryption", "keyfile")
    assert out.returncode == 0 and "encryption keyfile" in out.stdout, out.stderr
    assert not (tmp_path / "repo" / "keys").exists()  # nothing of the key in the repository
    [key_file] = (a.state_dir / "backup-keys").glob("*.key")
    assert key_file.stat().st_mode & 0o777 == 0o600
    disk = sparse_file(tmp_path / "vda.raw", 4 * MiB, [(0, randbytes(MiB))])
    backup_snapshot(a, file_snapshot("s1", {"vda": disk}))
    out = cli(env_b, "backup", "verify", "vm1")
    assert out.returncode == 3 and "this host has no key" in out.stderr and out.stderr.count("\n") == 1
    exported = tmp_path / "exported.key"
    assert cli(env_a, "backup", "key", "export", "--to", str(exported)).returncode == 0
    assert exported.stat().st_mode & 0o777 == 0o600 and b"first passphrase" not in exported.read_bytes()
    out = cli(env_b, "backup", "key", "import", str(exported))
    assert out.returncode == 0, out.stderr
    restore.restore(b, "vm1", "s1", to=[str(tmp_path / "r.raw")])
    assert sha(tmp_path / "r.raw") == sha(disk)
    new = tmp_path / "new-pass"
    new.write_text("second passphrase\n")
    assert cli(env_a, "backup", "key", "passwd", "--new-passphrase-file", str(new)).returncode == 0
    out = cli(env_a, "backup", "verify", "vm1")  # host a's key file is re-wrapped: the old passphrase fails
    assert out.returncode == 2 and "wrong passphrase" in out.stderr
    secret.write_text("second passphrase\n")
    assert cli(env_a, "backup", "verify", "vm1").returncode == 0


def test_a_target_emptied_on_purpose_is_made_anew_by_target_init_and_then_used(tmp_path):
    """The host refuses a target whose marker vanished (a swap or a wipe it did not ask for); `target init` makes a
    new repository there on purpose, and from then on the host knows the new one (the demo starts each run so)."""
    import shutil

    (tmp_path / "repo").mkdir()
    secret = tmp_path / "pass"
    secret.write_text("a passphrase\n")
    secret.chmod(0o600)
    settings, env = host(tmp_path, "host-a", secret)
    assert cli(env, "backup", "target", "init", "--encryption", "repokey").returncode == 0
    disk = sparse_file(tmp_path / "vda.raw", 4 * MiB, [(0, randbytes(MiB))])
    backup_snapshot(settings, file_snapshot("s1", {"vda": disk}))
    shutil.rmtree(tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    refused = cli(env, "backup", "list")
    assert refused.returncode == 2 and "format marker is gone" in refused.stderr
    assert cli(env, "backup", "target", "init", "--encryption", "repokey").returncode == 0
    backup_snapshot(settings, file_snapshot("s2", {"vda": disk}))
    listed = cli(env, "backup", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "s2" in listed.stdout and "s1" not in listed.stdout
