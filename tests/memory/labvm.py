"""Transient balloon-capable guests on the test lab's libvirtd, for the memory lab tests and the memory bench.

The lab's own VMs have no balloon (memballoon model='none'); these boot the lab's guest kernel with the `balloon`
initrd flavour (virtio_balloon loaded) and a virtio balloon whose stats period is 1 s, so libvirt gets the guest's
own memory figures. Transient: destroying the domain removes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt

from kvmkit.lab import domain, guest
from kvmkit.virt import agent


def balloon_xml(spec: domain.VmSpec, stats_period_s: int = 1) -> str:
    xml = domain.domain_xml(spec)
    balloon = f"<memballoon model='virtio'><stats period='{stats_period_s}'/></memballoon>"
    return xml.replace('<memballoon model="none" />', balloon)


@contextmanager
def balloon_guest(uri: str, lab_dir: Path, name: str, memory_mib: int = 384) -> Iterator[libvirt.virDomain]:
    """A running transient guest with a balloon, agent ready; destroyed afterwards."""
    image = guest.build(lab_dir.parent / "guest-cache", balloon=True)
    console = lab_dir / "log" / f"{name}.console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    spec = domain.VmSpec(name=name, image=image, console_log=console, memory_mib=memory_mib)
    xml = balloon_xml(spec)
    assert "virtio" in xml, "the lab's domain XML changed: no memballoon to replace"
    conn = libvirt.open(uri)
    dom = conn.createXML(xml, 0)
    try:
        deadline = time.monotonic() + 90
        while not agent.ping(dom, timeout_s=1):
            assert time.monotonic() < deadline and dom.isActive(), f"{name}: no agent; console {console}"
            time.sleep(0.25)
        yield dom
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass  # already gone (killed by a test)
        conn.close()


def guest_meminfo(dom: libvirt.virDomain) -> dict[str, int]:
    """/proc/meminfo inside the guest, through the agent, in bytes."""
    from kvmkit.memory.parse import meminfo

    return meminfo(agent.guest_shell(dom, "cat /proc/meminfo", 30.0))


@contextmanager
def zram_swap(size: str = "512M") -> Iterator[str]:
    """A zram swap device for the duration of a test (memory-backed: nothing is written to disk), then removed.

    This hybrid host's memory controller is cgroup v1: a VM over its limit and without swap can only have its
    QEMU OOM-killed. With swap, the limit makes the kernel reclaim the VM's anonymous memory instead — the
    swap-storm case operators meet. Global reclaim does not touch it while the host has free RAM, so other
    processes are not swapped.
    """
    import subprocess

    control = Path("/sys/class/zram-control")
    if not control.exists():
        raise AssertionError("this kernel has no zram (CONFIG_ZRAM): the pressure test needs a swap device")
    number = (control / "hot_add").read_text().strip()
    device = f"/dev/zram{number}"
    try:
        Path(f"/sys/block/zram{number}/disksize").write_text(size)
        subprocess.run(["mkswap", device], check=True, capture_output=True)
        subprocess.run(["swapon", "-p", "-5", device], check=True, capture_output=True)
        yield device
    finally:
        subprocess.run(["swapoff", device], capture_output=True)
        (control / "hot_remove").write_text(number)


KSM = Path("/sys/kernel/mm/ksm")


@contextmanager
def ksm_running(pages_to_scan: int = 5000, sleep_ms: int = 20) -> Iterator[None]:
    """KSM on and fast for the test; afterwards its settings back, and if nothing was merged before, unmerged."""
    names = ("run", "pages_to_scan", "sleep_millisecs")
    before = {name: (KSM / name).read_text().strip() for name in names}
    merged_before = int((KSM / "pages_sharing").read_text())
    try:
        (KSM / "pages_to_scan").write_text(str(pages_to_scan))
        (KSM / "sleep_millisecs").write_text(str(sleep_ms))
        (KSM / "run").write_text("1")
        yield
    finally:
        if before["run"] == "0" and merged_before == 0:
            (KSM / "run").write_text("2")  # unmerge what the test merged (other VMs' pages included)
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            (KSM / name).write_text(before[name])
