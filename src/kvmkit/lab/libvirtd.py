"""libvirtd without systemd: use the running daemon, or start virtlogd + libvirtd and remember their pids."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt

from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import procs

SYSTEM_URI = "qemu:///system"


def reachable(uri: str) -> bool:
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def ensure_running(uri: str, log_dir: Path) -> list[int]:
    """Start libvirtd for a local URI if it does not answer; returns the pids this call started."""
    if reachable(uri):
        return []
    if uri != SYSTEM_URI:
        raise EnvironmentProblem(f"libvirt at {uri} is not reachable (the lab only starts a local libvirtd)")
    Path("/run/libvirt").mkdir(parents=True, exist_ok=True)
    started = [procs.spawn(["virtlogd"], log_dir / "virtlogd.log"), procs.spawn(["libvirtd"], log_dir / "libvirtd.log")]
    deadline = time.monotonic() + 30
    while not reachable(uri):
        if not procs.alive(started[1]):
            raise EnvironmentProblem(f"libvirtd exited at start; see {log_dir / 'libvirtd.log'}")
        if time.monotonic() > deadline:
            for pid in started:
                procs.stop(pid, "libvirtd" if pid == started[1] else "virtlogd")
            raise EnvironmentProblem("libvirtd did not answer within 30 s")
        time.sleep(0.1)
    return started


def kvm_usable() -> tuple[bool, str]:
    """KVM only where it really works: here /dev/kvm is a PVM device on which a stock guest kernel hangs."""
    if Path("/sys/module/kvm_pvm").exists():
        return False, "/dev/kvm is kvm_pvm (a stock kernel hangs on it): using TCG"
    if not Path("/dev/kvm").exists():
        return False, "no /dev/kvm: using TCG"
    if not any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd")):
        return False, "no kvm_intel/kvm_amd module: using TCG"
    return True, "KVM"
