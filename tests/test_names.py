"""One rule per kind of name, the same at every door (CLI, library, manifests read back): issue 15 item 7 —
snapshot names starting with `-` were accepted and `--name ""` was silently replaced by a generated name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvmkit.backup.model import BackupManifest
from kvmkit.errors import InvalidInput
from kvmkit.names import check_snapshot_name, check_vm_name

BAD_SNAPSHOTS = ["", "-rf", "--help", ".hidden", "..", "a/b", "a b", "x" * 65, "a\nb", "é"]
BAD_VMS = ["", "-x", ".x", "a/b", "a b", "x" * 129, "a\x00b"]


@pytest.mark.parametrize("name", BAD_SNAPSHOTS)
def test_bad_snapshot_names_are_refused(name):
    with pytest.raises(InvalidInput, match="invalid snapshot name"):
        check_snapshot_name(name)


@pytest.mark.parametrize("name", BAD_VMS)
def test_bad_vm_names_are_refused(name):
    with pytest.raises(InvalidInput, match="invalid VM name"):
        check_vm_name(name)


@pytest.mark.parametrize("name", ["nightly", "sched-20261203-0100", "_x", "a.b-c_d", "9"])
def test_good_snapshot_names_pass_and_the_manifest_model_agrees(name):
    assert check_snapshot_name(name) == name
    manifest = BackupManifest(vm="vm1", vm_uuid="00000000-0000-4000-8000-000000000001", snapshot=name,
                              snapshot_created="2026-01-01T00:00:00", created="2026-01-01T00:00:00", target="t")
    assert manifest.snapshot == name


@pytest.mark.parametrize("args", [["snapshot", "create", "test", "--name", ""],
                                  ["snapshot", "create", "test", "--name=-rf"],
                                  ["snapshot", "delete", "test", "--", "-rf"],
                                  ["backup", "restore", "test", "--", "-rf"],
                                  ["backup", "verify", "--", "-x"]])
def test_the_cli_refuses_them_in_one_line_and_changes_nothing(tmp_path, args):
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\nlibvirt_uri = "test:///default"\n'
                      f'[[backup_targets]]\nname = "t1"\npath = "{tmp_path}/repo"\n')
    (tmp_path / "repo").mkdir()
    child = subprocess.run([sys.executable, "-m", "kvmkit", *args], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "KVMKIT_CONFIG": str(config)})
    assert child.returncode == 2, child.stderr
    assert child.stderr.count("\n") == 1 and "invalid" in child.stderr
