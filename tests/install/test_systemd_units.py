"""contrib/systemd: the units parse cleanly with systemd's own verifier (when installed), are hardened, and run
kvmkit commands that exist with options they accept."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
KVMKIT = Path(sys.executable).with_name("kvmkit")
SERVICES = sorted(UNITS.glob("*.service"))
HARDENING = {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate, `#`/`;` comments, no continuation lines used here."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _verify(folder: Path, names: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=folder, capture_output=True,
                          text=True, timeout=60)


def _copy_with_this_kvmkit(tmp_path: Path) -> list[str]:
    """The units name /usr/local/bin/kvmkit (what install.sh --host links); verify wants an executable there."""
    names = []
    for unit in sorted(UNITS.glob("kvmkit*.service")) + sorted(UNITS.glob("*.timer")):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/kvmkit", str(KVMKIT)))
        names.append(unit.name)
    return names


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_every_unit_without_a_warning(tmp_path):
    out = _verify(tmp_path, _copy_with_this_kvmkit(tmp_path))
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_verifier_would_catch_a_mistyped_setting(tmp_path):
    names = _copy_with_this_kvmkit(tmp_path)
    unit = tmp_path / "kvmkit-schedule.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    out = _verify(tmp_path, names)
    assert "Failed to parse protect system value" in out.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_every_service_is_hardened_and_runs_a_real_kvmkit_command(unit: Path):
    sections = parse_unit(unit.read_text())
    service = sections["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{unit.name}: {key}"
    [exec_start] = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/kvmkit"
    # click parses every argument before acting on --help: an unknown command or option fails here
    checked = subprocess.run([str(KVMKIT), *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.lstrip().startswith(f"Usage: kvmkit {argv[1]}"), checked.stdout[:200]
    if service.get("Type") != ["oneshot"]:
        assert service["Restart"] == ["on-failure"], unit.name
    if "schedule" in argv:
        # state and pool writes are allowed explicitly; the freeze watchdog must outlive a SIGTERM to kvmkit
        assert "/var/lib/kvmkit" in " ".join(service["ReadWritePaths"])
        assert service["KillMode"] == ["mixed"]


def test_the_cron_alternative_runs_one_pass_under_flock():
    line = next(li for li in (UNITS / "kvmkit.cron").read_text().splitlines() if li and li[0] not in "#" and
                li.split()[0] == "*/5")
    assert "flock -n" in line and "kvmkit schedule run --once" in line
    assert line.split("root", 1)[1].strip().startswith("umask 077;")  # its log (and what kvmkit makes) private


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(("unit", "most"), [("kvmkit-exporter.service", 3.5), ("kvmkit-schedule.service", 5.0),
                                            ("kvmkit-schedule-once.service", 5.0)])
def test_systemd_analyze_security_rates_each_unit_within_its_budget(tmp_path, unit, most):
    import re

    _copy_with_this_kvmkit(tmp_path)
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= most, out.stdout
