"""Starting and stopping the lab's daemons by pid, and the small host checks they need."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kvmkit.errors import EnvironmentProblem


def spawn(argv: list[str], log: Path) -> int:
    """Start a daemon in the foreground mode of its own session, detached from us, and return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return proc.pid


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (PID 1 here reaps slowly, so kill -0 lies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode(errors="replace").split("\0")
    except OSError:
        return []


def stop(pid: int, expect: str, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> bool:
    """Kill pid only if its command line still mentions `expect` (pids are reused); whether it was signalled."""
    if not alive(pid) or not any(expect in part for part in cmdline(pid)):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return True


def wait_until(ready: Callable[[], bool], pid: int, what: str, goal: str, log: Path, timeout_s: float,
               interval_s: float = 0.05) -> None:
    """Poll `ready` until it holds; fail at once if the daemon `pid` died, or at the deadline, naming its log."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not alive(pid):
            raise EnvironmentProblem(f"{what} exited at start; see {log}")
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"{what} did not {goal} within {timeout_s:.0f} s; see {log}")
        time.sleep(interval_s)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(start: int, end: int) -> int:
    for port in range(start, end):
        if port_free(port):
            return port
    raise EnvironmentProblem(f"no free TCP port on 127.0.0.1 in {start}-{end - 1}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("the lab needs root (it starts libvirtd, mounts a loop device and runs Ceph)")


def run(argv: list[str], what: str, timeout_s: float = 60.0) -> str:
    """Run a host tool (argument list, never a shell string) and turn failure into one clear line."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{what}: {argv[0]} is not installed (run scripts/install.sh)") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{what}: {argv[0]} did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise EnvironmentProblem(f"{what}: {' '.join(argv[:3])} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout
