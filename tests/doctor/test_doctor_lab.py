"""`kvmkit doctor` on the real lab: a healthy VM passes every line, a VM whose agent is stopped fails its line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import lab_vm

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def doctor_env(lab_state, tmp_path_factory) -> dict[str, str]:
    state_dir = tmp_path_factory.mktemp("doctor-state")
    state_dir.chmod(0o700)
    backup = tmp_path_factory.mktemp("doctor-backup")
    config = state_dir / "config.toml"
    config.write_text(f'[[backup_targets]]\nname = "local"\npath = "{backup}"\n\n'
                      f'[[backup_targets]]\nname = "gone"\npath = "{backup}/not-mounted"\n')
    silent_vm(lab_state)
    return {**os.environ, "KVMKIT_STATE_DIR": str(state_dir), "KVMKIT_CONFIG": str(config),
            "KVMKIT_LAB_DIR": str(lab_state.dir)}


def silent_vm(lab_state) -> str:
    """A running VM whose agent is not started (named after the lab folder: the libvirtd may be shared)."""
    return lab_vm(lab_state, f"{lab_state.dir.name}-silent", file_disks=1, rbd_disks=0, size_mib=64,
                  agent_running=False)


def _doctor(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "kvmkit", "doctor", *args], env=env, capture_output=True, text=True,
                         timeout=60)
    return out, time.perf_counter() - t0


def test_doctor_json_passes_the_lab_vm_and_fails_the_vm_whose_agent_is_stopped(lab_state, doctor_env):
    out, wall = _doctor(doctor_env, "--json")
    report = json.loads(out.stdout)
    by_key = {(f["check"], f["subject"]): f for f in report["findings"]}
    healthy = lab_state.vms[0].name
    assert by_key[("libvirt", lab_state.uri)]["severity"] == "ok"
    assert by_key[("agent", healthy)]["severity"] == "ok"
    assert by_key[("fsfreeze", healthy)]["severity"] == "ok"
    silent = by_key[("agent", silent_vm(lab_state))]
    assert silent["severity"] == "fail" and "agent not answering" in silent["message"]
    assert "qemu-guest-agent" in silent["fix"]
    assert ("fsfreeze", silent_vm(lab_state)) not in by_key  # no answer, nothing to ask about fsfreeze
    assert by_key[("reflink", str(lab_state.pool.path))]["severity"] == "ok"
    # the libvirtd may be shared with other labs: judge only the cluster our VM's RBD disk uses
    rbd = [f for f in report["findings"] if f["check"] == "rbd" and healthy in f["message"]]
    assert len(rbd) == 1 and rbd[0]["severity"] == "ok", rbd
    assert rbd[0]["subject"] == f"127.0.0.1:{lab_state.ceph.port} as client.admin"
    targets = {f["subject"].split(" ")[0]: f["severity"] for f in report["findings"] if f["check"] == "backup-target"}
    assert targets == {"local": "ok", "gone": "fail"}
    assert by_key[("state-dir", doctor_env["KVMKIT_STATE_DIR"])]["severity"] == "ok"
    assert by_key[("clock", "host")]["severity"] == "ok"
    assert report["exit_code"] == 1 and out.returncode == 1, out.stderr
    print(f"doctor on the lab: {report['seconds']:.3f} s inside, {wall:.2f} s wall with interpreter start")
    assert report["seconds"] > 0  # how fast is a benchmark's question (5.1 s here on a loaded host), not a test's


def test_doctor_text_is_one_line_per_check_with_the_fix_under_a_failure(lab_state, doctor_env):
    out, _ = _doctor(doctor_env)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    failing = [i for i, line in enumerate(lines) if line.startswith("FAIL agent") and silent_vm(lab_state) in line]
    assert failing, out.stdout
    assert lines[failing[0] + 1].strip().startswith("fix: start qemu-guest-agent")
    assert lines[-1].startswith("doctor: ") and " failed, in " in lines[-1]


def test_doctor_on_a_bad_uri_fails_the_libvirt_line(doctor_env):
    out, _ = _doctor(doctor_env, "--json", "--connect", "qemu:///sytem")
    report = json.loads(out.stdout)
    [libvirt] = [f for f in report["findings"] if f["check"] == "libvirt"]
    assert libvirt["severity"] == "fail" and report["findings"][0]["check"] == "bindings"  # bindings come first
    assert out.returncode == 1
    assert Path(doctor_env["KVMKIT_STATE_DIR"]).is_dir()
