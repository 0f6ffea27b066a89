"""`kvmkit schedule` as mounted, in a real process with a real config: a schedule for a VM that does not exist is
refused, and a failed scheduled job is loud (exit 1, a health event, last_run kept) — what a timer's unit and the
exporter's failure counter need to see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.health import events

TEST_URI = "test:///default"  # libvirt's in-memory driver: one running VM named `test`


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "target").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nlibvirt_uri = "{TEST_URI}"\n'
                      f'[[backup_targets]]\nname = "nfs1"\npath = "{tmp_path / "target"}"\n')
    return {**os.environ, "KVMKIT_CONFIG": str(config)}


def kvmkit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_schedule_add_refuses_a_vm_that_is_not_defined_and_changes_nothing(env, tmp_path):
    out = kvmkit(env, "schedule", "add", "ghost", "--every", "1h", "--keep-last", "2")
    assert out.returncode == 3
    assert out.stderr.splitlines() == ["kvmkit: error: no VM named 'ghost' is defined; pass --allow-undefined to "
                                       "schedule a VM not yet created"]
    assert not (tmp_path / "state" / "schedules.json").exists()
    assert kvmkit(env, "schedule", "add", "test", "--every", "1h", "--keep-last", "2").returncode == 0


def test_schedule_add_refuses_when_libvirt_cannot_be_asked(env):
    out = kvmkit(env, "schedule", "add", "ghost", "--every", "1h", "--keep-last", "2",
                 "--connect", "qemu+unix:///system?socket=/nonexistent/sock")
    assert out.returncode == 5 and "cannot connect to libvirt" in out.stderr


def test_add_list_remove_and_the_file_is_private(env, tmp_path):
    out = kvmkit(env, "schedule", "add", "vm1", "--every", "1h", "--keep-last", "24", "--keep-daily", "7",
                 "--backup", "--target", "nfs1", "--allow-undefined", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["every_s"] == 3600
    assert kvmkit(env, "schedule", "add", "vm1", "--every", "1h", "--keep-last", "1",
                  "--allow-undefined").returncode == 4
    listed = json.loads(kvmkit(env, "schedule", "list", "--json").stdout)
    assert [(s["vm"], s["keep_last"], s["keep_daily"], s["backup"]) for s in listed] == [("vm1", 24, 7, True)]
    assert (tmp_path / "state" / "schedules.json").stat().st_mode & 0o777 == 0o600
    assert kvmkit(env, "schedule", "remove", "vm1").returncode == 0
    assert json.loads(kvmkit(env, "schedule", "list", "--json").stdout) == []
    assert "no schedules" in kvmkit(env, "schedule", "list").stdout


def test_a_failed_scheduled_job_exits_1_records_a_health_event_and_stays_due(env, tmp_path):
    assert kvmkit(env, "schedule", "add", "ghost", "--every", "1h", "--keep-last", "2",
                  "--allow-undefined").returncode == 0
    for attempt in (1, 2):  # still due after a failure: the next run tries again
        out = kvmkit(env, "schedule", "run", "--once", "--json")
        assert out.returncode == 1, out.stderr
        [action] = json.loads(out.stdout)
        assert action["vm"] == "ghost" and action["action"] == "error" and "no VM named 'ghost'" in action["detail"]
        recorded, malformed = events.read(tmp_path / "state")
        assert malformed == 0
        assert [(e.kind, e.vm, e.reason) for e in recorded] == [
            (events.EventKind.SNAPSHOT_FAILURE, "ghost", "not_found")] * attempt
    [kept] = json.loads(kvmkit(env, "schedule", "list", "--json").stdout)
    assert kept["last_run"] is None


def test_schedule_run_loops_until_sigterm_and_exits_cleanly(env):
    proc = subprocess.Popen([sys.executable, "-m", "kvmkit", "schedule", "run"], env=env, cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert proc.poll() is None  # a long-running loop, as a systemd unit expects
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, proc.stderr.read()
