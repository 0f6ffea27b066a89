from pathlib import Path

import pytest

from kvmkit.config import load
from kvmkit.errors import InvalidInput


def test_defaults_without_a_file(tmp_path):
    s = load(tmp_path / "absent.toml", env={})
    assert s.libvirt_uri == "qemu:///system"
    assert s.catalog_path == Path("/var/lib/kvmkit/catalog.sqlite")
    assert s.lab_path == Path("/var/lib/kvmkit/lab")


def test_file_then_environment_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('libvirt_uri = "qemu+ssh://h1/system"\nfreeze_timeout_s = 5\n[ceph]\nclient_id = "cinder"\n')
    s = load(cfg, env={"KVMKIT_FREEZE_TIMEOUT_S": "7.5", "KVMKIT_STATE_DIR": str(tmp_path)})
    assert s.libvirt_uri == "qemu+ssh://h1/system"
    assert s.freeze_timeout_s == 7.5
    assert s.ceph.client_id == "cinder"
    assert s.catalog_path == tmp_path / "catalog.sqlite"


@pytest.mark.parametrize(
    ("text", "message"),
    [("unknown_key = 1\n", "unknown_key: Extra inputs are not permitted"),
     ("freeze_timeout_s = -1\n", "freeze_timeout_s: Input should be greater than 0"),
     ("libvirt_uri = \n", "not valid TOML")],
)
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(InvalidInput, match=message) as exc:
        load(cfg, env={})
    assert "\n" not in str(exc.value)


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load(None, env={"KVMKIT_CONFIG": str(tmp_path / "nope.toml")})


def test_a_bad_environment_override_names_its_variable(tmp_path):
    import pytest

    from kvmkit.config import load
    from kvmkit.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"^environment variable KVMKIT_FREEZE_TIMEOUT_S='abc': Input should be"):
        load(tmp_path / "absent.toml", env={"KVMKIT_FREEZE_TIMEOUT_S": "abc"})
