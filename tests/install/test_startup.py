"""A host install starts fast and reads first: `--help` and `--version` load no SciPy, plotly, NumPy or libvirt,
and without Debian's bindings every command that does not need them still runs, while the ones that do say in
one line which package to install (exit 5, "the host lacks something")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Runs kvmkit with the named modules made unimportable (as in a venv without --system-site-packages), and prints
# which heavy modules were loaded when it exits.
RUNNER = """
import atexit, json, sys
blocked = sys.argv[1].split(",") if sys.argv[1] else []
for name in blocked:
    sys.modules[name] = None
atexit.register(lambda: print("LOADED " + json.dumps(sorted(m for m in ("scipy", "plotly", "numpy", "libvirt",
    "rbd", "rados") if sys.modules.get(m) is not None)), file=sys.stderr))
sys.argv = ["kvmkit", *sys.argv[2:]]
from kvmkit.cli import main
main()
"""
NO_BINDINGS = "libvirt,libvirt_qemu,rbd,rados"


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "target").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[[backup_targets]]\nname = "d"\n'
                      f'path = "{tmp_path / "target"}"\n')
    config.chmod(0o600)
    return {"KVMKIT_CONFIG": str(config), "PATH": "/usr/bin:/bin", "COLUMNS": "120"}


def run(env: dict[str, str], blocked: str, *args: str) -> tuple[int, str, str, list[str]]:
    out = subprocess.run([sys.executable, "-I", "-c", RUNNER, blocked, *args], env=env, capture_output=True,
                         text=True, timeout=120, cwd="/")
    loaded_line = next(line for line in out.stderr.splitlines() if line.startswith("LOADED "))
    stderr = "\n".join(line for line in out.stderr.splitlines() if not line.startswith("LOADED "))
    return out.returncode, out.stdout, stderr, json.loads(loaded_line[len("LOADED "):])


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_help_and_version_load_nothing_heavy(env, args):
    code, stdout, _, loaded = run(env, "", *args)
    assert loaded == []
    assert code in (0, 2) and ("kvmkit" in stdout)
    if args == ["--help"]:
        assert all(name in stdout for name in ("snapshot", "backup", "schedule", "plan", "doctor"))


@pytest.mark.parametrize("args", [["backup", "list"], ["schedule", "list"], ["backup", "list", "--json"]])
def test_commands_that_need_no_bindings_run_without_them(env, args):
    code, stdout, stderr, loaded = run(env, NO_BINDINGS, *args)
    assert code == 0, stderr
    assert "libvirt" not in loaded
    assert stdout.strip() in ("[]", "no backups on target the default target",
                              "no schedules (add one with `kvmkit schedule add VM --every 1d --keep-daily 7`)")


def test_a_command_that_needs_libvirt_names_the_package(env):
    code, stdout, stderr, _ = run(env, NO_BINDINGS, "snapshot", "list", "--json")
    assert code == 5
    assert stderr.splitlines() == ["kvmkit: error: this command needs the libvirt Python bindings: apt-get install "
                                   "python3-libvirt (a venv needs --system-site-packages to see them)"]
    assert json.loads(stdout)["error"]["exit_code"] == 5


def test_doctor_reports_missing_bindings_instead_of_failing(env):
    code, stdout, stderr, _ = run(env, NO_BINDINGS, "doctor", "--json")
    assert code == 1, stderr
    findings = {(f["check"], f["subject"]): f for f in json.loads(stdout)["findings"]}
    assert findings[("bindings", "libvirt")]["severity"] == "fail"
    assert "apt-get install python3-libvirt" in findings[("bindings", "libvirt")]["fix"]
    assert findings[("bindings", "rbd")]["severity"] == "warn"
