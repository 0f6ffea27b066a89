"""Pure recognition of QEMU's threads from their names alone (no libvirt, no I/O); QEMU processes themselves
are recognised in kvmkit.sampling.qemu.

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
