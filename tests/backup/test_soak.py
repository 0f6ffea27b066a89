"""The fleet soak, short (issue 23 item 5): four writer hosts and two pruner hosts on one encrypted directory
repository with random kill -9; afterwards every complete backup verifies and restores byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab  # restores ask libvirt which disks are in use (fail closed without it)
KVMKIT = [str(Path(sys.executable).parent / "kvmkit")]


def soak_config(tmp_path: Path, target_lines: str) -> dict[str, str]:
    secret = tmp_path / "passphrase"
    secret.write_text("soak passphrase\n")
    secret.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[backup_targets]]\nname = "soak"\n{target_lines}'
                      f'passphrase_file = "{secret}"\ngc_margin_s = 0\n')
    config.chmod(0o600)  # an S3 target's lines hold its secret key: kvmkit refuses such a config readable by others
    return {**os.environ, "KVMKIT_CONFIG": str(config)}


def run_soak(env: dict[str, str], folder: Path, seconds: int) -> dict:
    init = subprocess.run([*KVMKIT, "backup", "target", "init"], env=env, capture_output=True, text=True, cwd="/",
                          timeout=120)
    assert init.returncode == 0, init.stderr
    out = subprocess.run([*KVMKIT, "backup", "soak", str(folder), "--seconds", str(seconds), "--kill-every", "6",
                          "--json"], env=env, capture_output=True, text=True, cwd="/", timeout=seconds + 900)
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"], (result, out.stderr)
    return result


@pytest.mark.timeout(1500)  # 40 s of soak, then every backup verified and restored: minutes on a loaded host
def test_a_short_fleet_soak_on_a_directory_loses_nothing(lab_state, tmp_path):
    (tmp_path / "repo").mkdir()
    result = run_soak(soak_config(tmp_path, f'path = "{tmp_path / "repo"}"\n'), tmp_path / "run", 40)
    assert result["writers"] == 4 and result["pruners"] == 2
    assert result["backups"] > 0 and result["kills"] > 0 and result["prunes"] + result["deletes"] > 0
    assert result["checked"] > 0 and result["mismatched"] == [] and result["damaged"] == []
