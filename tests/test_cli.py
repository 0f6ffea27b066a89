import subprocess
import sys

from kvmkit import __version__


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], capture_output=True, text=True, env=env)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"kvmkit {__version__}"


def test_kvmkit_error_is_one_line_with_its_exit_code(tmp_path):
    import os

    env = {**os.environ, "KVMKIT_CONFIG": str(tmp_path / "missing.toml")}
    out = run("lab", "status", env=env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("kvmkit: error: config file")
    assert "Traceback" not in out.stderr


def test_unknown_option_is_a_usage_error():
    out = run("lab", "up", "--bogus")
    assert out.returncode == 2 and "Traceback" not in out.stderr
