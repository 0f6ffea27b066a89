"""spawn(): a command's own peak RSS (not kvmkit's, which exec would otherwise pass on), timeouts, exit codes."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from kvmkit.bench.runner import HostRunner
from kvmkit.bench.spawn import spawn


def test_peak_rss_is_the_commands_own_not_the_big_parents():
    ballast = bytearray(300 * 1024 * 1024)  # kvmkit at 300+ MiB RSS …
    ballast[::4096] = b"x" * len(ballast[::4096])
    done = spawn(["true"], timeout_s=30)
    assert done.returncode == 0
    assert 0 < done.peak_rss_kib < 64 * 1024, "… must not make `true` look like a 300 MiB process"
    del ballast


def test_peak_rss_tracks_a_command_that_grows():
    grow = ["python3", "-S", "-c", "b = bytearray(120 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"]
    done = spawn(grow, timeout_s=60)
    assert done.returncode == 0 and 120 * 1024 < done.peak_rss_kib < 200 * 1024


def test_exit_codes_and_output_come_back():
    done = spawn(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep")
def test_timeout_kills_the_whole_process_group():
    seconds = f"{30 + time.monotonic_ns() % 1000 / 1000:.3f}"  # a sleep nobody else runs
    started = time.monotonic()
    done = spawn(["sh", "-c", f"sleep {seconds} & sleep {seconds}"], timeout_s=1)
    assert done.timed_out and time.monotonic() - started < 10
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", f"sleep {seconds}"], capture_output=True, text=True).stdout.split()
    assert left == []


def test_host_runner_reports_fios_peak_rss():
    done = HostRunner().run(["fio", "--version"], timeout_s=30)
    assert done.returncode == 0 and done.stdout.startswith("fio-")
    assert 0 < done.peak_rss_kib < 64 * 1024
