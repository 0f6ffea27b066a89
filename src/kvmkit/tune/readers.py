"""Small readers shared by the checks: one file, one file per CPU or disk, the kernel command line.

They turn sysfs text into plain scalars and raise Unreadable with the file named, so every check reports
UNKNOWN the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmkit.tune.hostfs import HostView, Unreadable
from kvmkit.tune.model import HOST, Scalar

CPU = "/sys/devices/system/cpu"
NO_CPUFREQ = "no cpufreq driver: the CPU frequency is managed by firmware or the hypervisor"
NO_CPUIDLE = "no cpuidle states exposed (driver {driver}): idle depth is chosen by firmware or the hypervisor"


@dataclass
class Observed:
    """What a collector returns; `sources` says which file each instance's value came from."""

    values: dict[str, Scalar]
    sources: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    facts: dict[str, Scalar] = field(default_factory=dict)  # context a fix needs; never judged


def bracketed(text: str) -> str:
    """The selected word of a sysfs choice file such as 'always [madvise] never'."""
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else text.strip()


def parse_int(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise Unreadable(f"{where}: expected an integer, got {text.strip()[:40]!r}") from None


def cpu_names(host: HostView) -> list[str]:
    names = [n for n in host.listdir(CPU) if re.fullmatch(r"cpu\d+", n)]
    return sorted(names, key=lambda n: int(n[3:]))


def per_file(host: HostView, paths: dict[str, str], parse: Callable[[str, str], Scalar]) -> Observed:
    """Read one file per instance; an instance whose file is missing is skipped, all missing is Unreadable."""
    values: dict[str, Scalar] = {}
    sources: dict[str, str] = {}
    reasons = []
    for instance, path in paths.items():
        try:
            values[instance] = parse(host.read(path), path)
            sources[instance] = path
        except Unreadable as exc:
            reasons.append(exc.reason)
    if not values:
        raise Unreadable(reasons[0] if reasons else "nothing to read")
    return Observed(values, sources)


def single(host: HostView, path: str, parse: Callable[[str, str], Scalar] = lambda t, _p: t.strip()) -> Observed:
    return per_file(host, {HOST: path}, parse)


def cmdline_params(host: HostView) -> dict[str, str | None]:
    """Kernel command line as name → value (None for bare flags); only the part before a lone '--'."""
    params: dict[str, str | None] = {}
    for word in host.read("/proc/cmdline").split():
        if word == "--":
            break
        name, sep, value = word.partition("=")
        params[name] = value if sep else None
    return params


def cmdline_param(*names: str) -> Callable[[HostView], Observed]:
    def collect(host: HostView) -> Observed:
        params = cmdline_params(host)
        for name in names:
            if name in params:
                return Observed({HOST: params[name] if params[name] is not None else ""}, {}, f"{name}=")
        return Observed({HOST: None}, {}, "not on /proc/cmdline")

    return collect


def text_file(path: str) -> Callable[[HostView], Observed]:
    return lambda host: single(host, path)


def int_file(path: str) -> Callable[[HostView], Observed]:
    return lambda host: single(host, path, parse_int)


def choice_file(path: str) -> Callable[[HostView], Observed]:
    return lambda host: single(host, path, lambda t, _p: bracketed(t))
