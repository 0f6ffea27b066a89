"""HostView: the one place `kvmkit tune` reads a host, always under a configurable root.

Why a root: the live host is root "/", a capture is an extracted tree, and the tests' writable fixtures are a
temporary sysfs-like tree; the checks cannot tell them apart, so a capture audits exactly like the live host.

Things that are not files (the PM-QoS value behind /dev/cpu_dma_latency, whether irqbalance runs, what
`dmidecode` or `tuned-adm` print) are *probes*: run live only when the root is "/", read back from the capture's
probes/ folder otherwise. Every failure surfaces as `Unreadable(reason)` so a check becomes UNKNOWN, never a crash.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

LIVE_ROOT = Path("/")
# `dmidecode` and `tuned-adm` are optional: absent means the probe is UNKNOWN, not an error.
TOOL_PROBES: dict[str, list[str]] = {
    "dmidecode": ["dmidecode", "-t", "bios", "-t", "system"],
    "tuned-adm": ["tuned-adm", "active"],
}
PROBE_NAMES = ("cpu_dma_latency", "irqbalance", "qemu_guests", *TOOL_PROBES)
_TOOL_TIMEOUT_S = 10


class Unreadable(Exception):
    """A value could not be read; `reason` is the sentence shown in the UNKNOWN row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class HostView:
    """Read-only access to one host's /sys, /proc, /dev, /etc under `root`.

    `probe_dir` holds saved probe outputs (a capture); `recorded_errors` maps a path or `probe:NAME` to the
    reason it was unreadable where the capture was taken, so UNKNOWN keeps its original cause.
    """

    def __init__(
        self,
        root: Path = LIVE_ROOT,
        probe_dir: Path | None = None,
        recorded_errors: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.probe_dir = probe_dir
        self.recorded_errors = dict(recorded_errors or {})

    @property
    def is_live(self) -> bool:
        return self.root == LIVE_ROOT and self.probe_dir is None

    def path(self, host_path: str) -> Path:
        """The real file behind an absolute host path such as /proc/cmdline."""
        return self.root / host_path.lstrip("/")

    def read(self, host_path: str) -> str:
        """A small text file's content without the trailing newline."""
        if host_path in self.recorded_errors:
            raise Unreadable(f"{host_path}: {self.recorded_errors[host_path]}")
        try:
            return self.path(host_path).read_text(errors="replace").rstrip("\n")
        except FileNotFoundError:
            raise Unreadable(f"{host_path} does not exist") from None
        except OSError as exc:
            raise Unreadable(f"{host_path}: {_os_reason(exc)}") from None

    def listdir(self, host_path: str) -> list[str]:
        """Sorted entry names; a missing folder is Unreadable so callers decide what absence means."""
        if host_path in self.recorded_errors:
            raise Unreadable(f"{host_path}: {self.recorded_errors[host_path]}")
        try:
            return sorted(os.listdir(self.path(host_path)))
        except FileNotFoundError:
            raise Unreadable(f"{host_path} does not exist") from None
        except OSError as exc:
            raise Unreadable(f"{host_path}: {_os_reason(exc)}") from None

    def exists(self, host_path: str) -> bool:
        return os.path.lexists(self.path(host_path))

    def probe(self, name: str) -> str:
        """The output of a non-file probe (see PROBE_NAMES)."""
        if name not in PROBE_NAMES:
            raise ValueError(f"unknown probe {name!r}")
        key = f"probe:{name}"
        if key in self.recorded_errors:
            raise Unreadable(self.recorded_errors[key])
        if self.probe_dir is not None:
            try:
                return (self.probe_dir / name).read_text().rstrip("\n")
            except FileNotFoundError:
                raise Unreadable(f"probe {name} is not in the capture") from None
        if not self.is_live:
            raise Unreadable(f"probe {name} runs only on the live host (root is {self.root})")
        return _live_probe(name)


def _live_probe(name: str) -> str:
    if name == "cpu_dma_latency":
        return str(_read_cpu_dma_latency())
    if name == "irqbalance":
        return _irqbalance_state()
    if name == "qemu_guests":
        return _qemu_guests()
    return _run_tool(TOOL_PROBES[name])


def _read_cpu_dma_latency() -> int:
    """The current system-wide PM-QoS CPU latency limit in µs (2000000000 means no limit).

    Opening the device adds a request at the default (no limit), which cannot lower the aggregate we read.
    """
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_RDONLY)
    except OSError as exc:
        raise Unreadable(f"/dev/cpu_dma_latency: {_os_reason(exc)}") from None
    try:
        raw = os.read(fd, 4)
    except OSError as exc:
        raise Unreadable(f"/dev/cpu_dma_latency: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    if len(raw) != 4:
        raise Unreadable(f"/dev/cpu_dma_latency returned {len(raw)} bytes, expected 4")
    return struct.unpack("=i", raw)[0]


def _pids() -> list[str]:
    try:
        return [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError as exc:
        raise Unreadable(f"/proc: {_os_reason(exc)}") from None


def _irqbalance_state() -> str:
    """'running <pid>' or 'not running', from /proc/*/comm (no pgrep dependency)."""
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "irqbalance":
                    return f"running {pid}"
        except OSError:
            continue  # the process exited while we looked
    return "not running"


def _qemu_guests() -> str:
    """One line per running QEMU: '<pid><TAB><its -m argument>' (empty when it has none: QEMU's default)."""
    lines = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(("qemu-system-", "qemu-kvm")):
            continue
        memory = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-m", "--m")), "")
        lines.append(f"{pid}\t{memory}")
    return "\n".join(lines)


def _run_tool(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        raise Unreadable(f"{argv[0]} is not installed")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise Unreadable(f"{argv[0]} did not answer within {_TOOL_TIMEOUT_S} s") from None
    except OSError as exc:
        raise Unreadable(f"{argv[0]}: {_os_reason(exc)}") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise Unreadable(f"{argv[0]} exited {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return proc.stdout.rstrip("\n")
