"""A Runner that needs only "run this argv over there and give me exit code, stdout, stderr".

That is exactly what qemu-ga's guest-exec offers, so fio inside a lab VM is:

    runner = CommandRunner("vm:lab1", functools.partial(kvmkit.virt.agent.guest_exec, dom))
    run_suite("quick", "/dev/vdb", runner, BenchOptions(destructive="/dev/vdb"))

Everything — probing the target, scratch folders, latency logs — goes through plain commands that
busybox-static has (stat, blockdev, df, cat, cmp, mktemp, rm, touch; blkid where present), never a shell
string. What cannot be known that way is left unknown rather than guessed: peak RSS of fio (0), O_DIRECT
support (None), earlier fills (a file is always filled again). Tested on the host with a subprocess exec
function, once with the host's tools and once with busybox's applets only, as in the lab guest.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from kvmkit.bench.probe import TargetProbe
from kvmkit.bench.runner import Completed
from kvmkit.bench.schema import Machine
from kvmkit.errors import EnvironmentProblem, KvmkitError, OperationFailed


class ExecOutput(Protocol):
    """The shape of kvmkit.virt.agent.ExecResult."""

    exit_code: int
    stdout: bytes
    stderr: bytes


ExecFn = Callable[[list[str], float], ExecOutput]


class CommandRunner:
    def __init__(self, name: str, exec_fn: ExecFn, tmp_root: str = "/tmp") -> None:
        self.name = name
        self.exec_fn = exec_fn
        self.tmp_root = tmp_root

    def _out(self, argv: list[str], timeout_s: float = 30) -> tuple[int, str]:
        """Exit code and stdout; a tool the guest lacks (guest-exec refuses to start it) counts as exit 127."""
        try:
            result = self.exec_fn(argv, timeout_s)
        except KvmkitError:
            return 127, ""
        return result.exit_code, result.stdout.decode(errors="replace")

    def _must(self, argv: list[str]) -> str:
        code, out = self._out(argv)
        if code != 0:
            raise OperationFailed(f"{self.name}: {' '.join(argv)} failed (exit {code})")
        return out

    def machine(self) -> Machine:
        meminfo = self._must(["cat", "/proc/meminfo"])
        ram_kib = next(int(ln.split()[1]) for ln in meminfo.splitlines() if ln.startswith("MemTotal:"))
        cpuinfo = self._must(["cat", "/proc/cpuinfo"])
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
        return Machine(
            hostname=self._must(["cat", "/proc/sys/kernel/hostname"]).strip(),
            kernel=self._must(["cat", "/proc/sys/kernel/osrelease"]).strip(),
            cpu_model=models[0] if models else "unknown",
            cpus=max(1, sum(ln.startswith("processor") for ln in cpuinfo.splitlines())),
            ram_bytes=ram_kib * 1024,
            runner=self.name,
        )

    def _mounts(self) -> list[tuple[str, str, str]]:
        rows = [ln.split() for ln in self._must(["cat", "/proc/mounts"]).splitlines()]
        return [(r[0], r[1], r[2]) for r in rows if len(r) >= 3]

    def _fs_of(self, path: str) -> str | None:
        best, kind = "", None
        for _, mountpoint, fstype in self._mounts():
            inside = path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")
            if inside and len(mountpoint) >= len(best):
                best, kind = mountpoint, fstype
        return kind

    def _free(self, folder: str) -> int | None:
        code, out = self._out(["df", "-k", "-P", folder])
        lines = out.strip().splitlines()
        if code != 0 or len(lines) < 2:
            return None
        return int(lines[-1].split()[3]) * 1024

    def probe(self, path: str) -> TargetProbe:
        ram = self.machine().ram_bytes
        code, out = self._out(["stat", "-L", "-c", "%s %F", path])
        if code != 0:
            parent = path.rsplit("/", 1)[0] or "/"
            pcode, pout = self._out(["stat", "-L", "-c", "%F", parent])
            if pcode != 0 or pout.strip() != "directory":
                return TargetProbe(path, "missing", parent_exists=False, ram_bytes=ram)
            return TargetProbe(
                path, "missing", free_bytes=self._free(parent), filesystem=self._fs_of(parent), ram_bytes=ram
            )
        size_text, kind_text = out.strip().split(" ", 1)
        if kind_text == "directory":
            return TargetProbe(path, "dir", ram_bytes=ram)
        if kind_text.startswith("block"):
            size = int(self._must(["blockdev", "--getsize64", path]).strip())
            mounted = next((mp for src, mp, _ in self._mounts() if src == path or src.startswith(path)), None)
            signature = self._signature(path)
            return TargetProbe(path, "block", size_bytes=size, mounted_at=mounted, signature=signature, ram_bytes=ram)
        if not kind_text.startswith("regular"):
            return TargetProbe(path, "other", ram_bytes=ram)
        size = int(size_text)
        parent = path.rsplit("/", 1)[0] or "/"
        return TargetProbe(
            path,
            "file",
            size_bytes=size,
            free_bytes=self._free(parent),
            filesystem=self._fs_of(path),
            owned=size == 0,
            ram_bytes=ram,
        )

    def _signature(self, device: str) -> str | None:
        """blkid's TYPE where blkid exists (busybox-static 1.35 has none), else "data" if the first MiB is not
        all zeros (cmp against /dev/zero: exit 0 same, 1 differs); None when neither can tell."""
        code, out = self._out(["blkid", device])
        if code == 0 and 'TYPE="' in out:
            return out.split('TYPE="', 1)[1].split('"', 1)[0]
        # -s: busybox 1.35's cmp -n prints every differing byte (49 MB for 1 MiB of random data), which breaks
        # the agent channel (libvirt caps an agent reply at 10 MiB)
        code, _ = self._out(["cmp", "-s", "-n", str(1024 * 1024), device, "/dev/zero"])
        return "data" if code == 1 else None

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed:
        started = time.monotonic()
        result = self.exec_fn(list(argv), timeout_s)
        if result.exit_code == 127:
            raise EnvironmentProblem(f"{self.name}: {argv[0]} not found there")
        return Completed(
            list(argv),
            result.exit_code,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
            time.monotonic() - started,
            0,
        )

    def read_lines(self, path: str) -> Iterator[str]:
        # guest-exec returns output whole; the logs are small because fio averages them (log_avg_msec).
        code, out = self._out(["cat", path])
        if code == 0:
            yield from out.splitlines()

    @contextmanager
    def scratch(self) -> Iterator[str]:
        folder = self._must(["mktemp", "-d", "-p", self.tmp_root, "kvmkit-bench.XXXXXX"]).strip()
        try:
            yield folder
        finally:
            self._out(["rm", "-rf", folder])

    def claim(self, path: str, filled_bytes: int | None = None) -> None:
        self._must(["touch", path])

    def remove(self, path: str) -> None:
        self._out(["rm", "-f", path])


class LocalExec:
    """An exec function over subprocess, with guest_exec's result shape: to test CommandRunner on the host."""

    def __call__(self, argv: list[str], timeout_s: float) -> ExecOutput:
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout_s)
        except FileNotFoundError:
            return _Result(127, b"", f"{argv[0]}: not found".encode())
        return _Result(done.returncode, done.stdout, done.stderr)


class _Result:
    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
