"""Pure recognition of QEMU processes and their threads from names alone (no libvirt, no I/O).

QEMU started with `-name ...,debug-threads=on` (libvirt always does) names its threads: `CPU 0/KVM` (or
`/TCG`, `/HVF` … by accelerator) for vCPUs, `IO <id>` for iothreads, `worker`, `call_rcu`, `vnc_worker` …
for the rest. vhost workers are `vhost-<qemu pid>`: threads of the QEMU process on kernels ≥ 6.4, kernel
threads before that.
"""

from __future__ import annotations

import re

from kvmkit.congestion.model import ThreadClass, ThreadKind

_VCPU = re.compile(r"^CPU (\d+)/[A-Za-z]+$")
_IOTHREAD = re.compile(r"^IO (.+)$")
_VHOST = re.compile(r"^vhost-(\d+)$")


def is_qemu(comm: str, exe_name: str | None = None) -> bool:
    """True for a QEMU system emulator; the kernel truncates comm to 15 characters, so match a prefix."""
    return any(name.startswith("qemu-system") or name == "qemu-kvm" for name in (comm, exe_name or ""))


def vhost_owner(comm: str) -> int | None:
    """The QEMU pid a `vhost-<pid>` worker serves, else None."""
    match = _VHOST.match(comm)
    return int(match.group(1)) if match else None


def classify_thread(name: str) -> ThreadClass:
    """vCPU, iothread, vhost worker, or emulator (everything else: main loop, workers, RCU, VNC …)."""
    if match := _VCPU.match(name):
        vcpu = int(match.group(1))
        return ThreadClass(ThreadKind.VCPU, str(vcpu), vcpu)
    if match := _IOTHREAD.match(name):
        return ThreadClass(ThreadKind.IOTHREAD, match.group(1))
    if _VHOST.match(name):
        return ThreadClass(ThreadKind.VHOST, name)
    return ThreadClass(ThreadKind.EMULATOR, name)


def split_qemu_opts(value: str) -> list[str]:
    """Split a QEMU option string on commas; `,,` is an escaped literal comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "," and value[i + 1 : i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def domain_from_cmdline(argv: list[str]) -> str | None:
    """The guest name from `-name guest=NAME,...` (or the implied form `-name NAME,...`); None if absent."""
    for i, arg in enumerate(argv):
        if arg in ("-name", "--name") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("-name=", "--name=")):
            value = arg.split("=", 1)[1]
        else:
            continue
        for position, part in enumerate(split_qemu_opts(value)):
            key, sep, val = part.partition("=")
            if sep and key == "guest" and val:
                return val
            if not sep and position == 0 and key:
                return key
        return None
    return None
