"""The config file can make kvmkit run commands as root: it is read only when it is a small regular file that
nobody else can write (issue 15 item 7: `KVMKIT_CONFIG=/dev/zero` hung; a world-writable config was read)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvmkit.config import MAX_CONFIG_BYTES, load
from kvmkit.errors import InvalidInput


def good(tmp_path, text='libvirt_uri = "test:///default"\n'):
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_group_or_world_writable_config_is_refused(tmp_path, mode):
    path = good(tmp_path)
    path.chmod(mode)
    with pytest.raises(InvalidInput, match="writable by group or others"):
        load(path, env={})


def test_a_config_owned_by_someone_else_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the suite runs as root (make test, CI): chown needs it")
    path = good(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(InvalidInput, match="owned by uid 65534, not by root"):
        load(path, env={})


def test_a_config_in_a_folder_others_can_write_is_refused_but_sticky_tmp_is_fine(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    path = good(folder)
    folder.chmod(0o777)
    with pytest.raises(InvalidInput, match="writable by others"):
        load(path, env={})
    folder.chmod(0o1777)
    assert load(path, env={}).libvirt_uri == "test:///default"


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "folder", "big", "binary"])
def test_a_config_that_is_not_a_small_text_file_is_one_line_and_quick(tmp_path, target):
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    elif target == "folder":
        target = str(tmp_path)
    elif target == "big":
        path = good(tmp_path)
        with path.open("ab") as fh:
            fh.truncate(MAX_CONFIG_BYTES + 1)
        target = str(path)
    elif target == "binary":
        path = good(tmp_path)
        path.write_bytes(b"\xff\xfe\x00")
        target = str(path)
    child = subprocess.run([sys.executable, "-m", "kvmkit", "backup", "list"], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "KVMKIT_CONFIG": target})
    assert child.returncode == 2, child.stderr
    assert len(child.stderr.strip().splitlines()) == 1 and "Traceback" not in child.stderr


def test_a_deeply_nested_config_is_one_line(tmp_path):
    path = good(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InvalidInput) as info:
        load(path, env={})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("secret", [
    '[storpool]\ntoken = "t0ken"\n',
    '[[backup_targets]]\nname = "s3"\nkind = "s3"\nbucket = "b"\nsecret_key = "s3cr3t"\n',
])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_config_holding_a_secret_must_be_0600(tmp_path, secret, mode):
    path = good(tmp_path, secret)
    path.chmod(mode)
    with pytest.raises(InvalidInput, match=r"holds a secret \(.*\) and is readable by group or others") as err:
        load(path, env={})
    assert "t0ken" not in str(err.value) and "s3cr3t" not in str(err.value) and "chmod 600" in str(err.value)
    path.chmod(0o600)
    load(path, env={})


def test_a_config_that_names_where_a_secret_lives_may_be_0644(tmp_path):
    path = good(tmp_path, '[[backup_targets]]\nname = "s3"\nkind = "s3"\nbucket = "b"\n'
                          'secret_key_env = "KVMKIT_S3_SECRET_KEY"\n[storpool]\ntoken_env = "SP_AUTH_TOKEN"\n')
    path.chmod(0o644)
    assert load(path, env={}).storpool.token_env == "SP_AUTH_TOKEN"
