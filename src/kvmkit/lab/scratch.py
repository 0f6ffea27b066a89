"""What a benchmark borrows from the lab for one measurement: a transient VM and a qemu-storage-daemon.

Neither is in the lab's state (each lives for one path of `kvmkit bench paths`), so their names are fixed here,
the daemon's pid is kept in a 0600 file, and `lab down` stops both by those names even when the benchmark that
started them was killed (a transient VM holding the pool would otherwise keep it from being unmounted).
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path

import libvirt

from kvmkit.errors import OperationFailed
from kvmkit.lab import procs
from kvmkit.lab.state import LabState
from kvmkit.virt.connection import connection

QSD = "qemu-storage-daemon"


def vm_name(state: LabState) -> str:
    return f"{state.dir.name}-paths"


def socket_path(state: LabState) -> Path:
    return state.dir / "paths-vhost.sock"


def _pidfile(state: LabState) -> Path:
    return state.dir / "paths-qsd.pid"


def start_storage_daemon(state: LabState, backing: Path) -> int:
    """Serve `backing` as vhost-user-blk on socket_path(state); returns once QEMU can connect."""
    stop_storage_daemon(state)  # one left by a killed run
    sock, log = socket_path(state), state.dir / "log" / "qsd.log"
    pid = procs.spawn([
        QSD,
        "--blockdev", f"driver=file,node-name=file0,filename={backing},cache.direct=on,aio=native",
        "--blockdev", "driver=raw,node-name=raw0,file=file0",
        "--export", f"type=vhost-user-blk,id=exp0,addr.type=unix,addr.path={sock},node-name=raw0,writable=on",
    ], log)
    fd = os.open(_pidfile(state), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(pid))
    deadline = time.monotonic() + 10
    while not sock.exists():
        if not procs.alive(pid) or time.monotonic() > deadline:
            stop_storage_daemon(state)
            raise OperationFailed(f"{QSD} did not start; see {log}")
        time.sleep(0.02)
    os.chmod(sock, 0o666)  # QEMU runs as libvirt-qemu and must connect (LAB-FACTS)
    return pid


def stop_storage_daemon(state: LabState) -> bool:
    """Stop the daemon the pid file names (only if it still is one); False when there was none."""
    try:
        pid = int(_pidfile(state).read_text())
    except (OSError, ValueError):
        return False
    stopped = procs.stop(pid, QSD)  # checks the command line: a recycled pid is left alone
    _pidfile(state).unlink(missing_ok=True)
    socket_path(state).unlink(missing_ok=True)
    return stopped


def destroy_vm(conn: libvirt.virConnect, state: LabState) -> bool:
    """Destroy the scratch VM if it runs (it is transient: destroying removes it); False when there was none."""
    with suppress(libvirt.libvirtError):
        conn.lookupByName(vm_name(state)).destroy()
        return True
    return False


def stop(state: LabState, libvirt_up: bool) -> list[str]:
    """Everything scratch that is still there, stopped; what was stopped, for the progress line."""
    stopped = []
    if libvirt_up:
        with connection(state.uri) as conn:
            if destroy_vm(conn, state):
                stopped.append(f"{vm_name(state)} (scratch VM)")
    if stop_storage_daemon(state):
        stopped.append(QSD)
    return stopped
