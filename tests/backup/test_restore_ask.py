"""`backup restore --force` replaces what is at the destination: it shows what it will replace and asks on a
terminal, needs --yes without one, and --dry-run only shows the plan."""

from __future__ import annotations

import json

from tests.backup.test_backup_cli import env, kvmkit, two_backups  # noqa: F401 (env is a fixture)


def test_restore_force_shows_its_plan_and_needs_yes(env, tmp_path):  # noqa: F811
    two_backups(tmp_path)
    dest = tmp_path / "restored.raw"
    dest.write_bytes(b"keep me")
    dry = kvmkit(env, "backup", "restore", "vm1", "s1", "-t", "nfs1", "--to", str(dest), "--force", "--dry-run",
                 "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["plan"] == [f"write disk vda of backup s1 to {dest}, replacing what is there"]
    refused = kvmkit(env, "backup", "restore", "vm1", "s1", "-t", "nfs1", "--to", str(dest), "--force")
    assert refused.returncode == 2 and "pass --yes to go ahead" in refused.stderr
    assert dest.read_bytes() == b"keep me"
    done = kvmkit(env, "backup", "restore", "vm1", "s1", "-t", "nfs1", "--to", str(dest), "--force", "--yes")
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() != b"keep me"
