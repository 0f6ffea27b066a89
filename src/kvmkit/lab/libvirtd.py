"""libvirtd without systemd: use the running daemon, or start virtlogd + libvirtd and remember their pids."""

from __future__ import annotations

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
    try:
        procs.wait_until(lambda: reachable(uri), started[1], "libvirtd", "answer", log_dir / "libvirtd.log", 30,
                         interval_s=0.1)
    except EnvironmentProblem:
        for pid, name in zip(started, ("virtlogd", "libvirtd"), strict=True):
            procs.stop(pid, name)
        raise
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
