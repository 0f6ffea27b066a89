"""Real QEMU guests with a known CPU demand, for `bench` and the tests: no guest OS, no libvirt, no lab.

The guest boots a 512-byte disk whose boot sector is `jmp $`: its one vCPU (TCG) spins forever, so its thread is
always runnable and k such guests pinned to one otherwise idle core must each wait (k−1)/k. Other load on that
core (from /proc/stat) is measured and reported, because it moves the truth.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pydantic import BaseModel

from kvmkit.congestion.collector import Collector
from kvmkit.congestion.kernelfiles import core_ticks
from kvmkit.congestion.model import ThreadKind
from kvmkit.congestion.procfs import ProcReader
from kvmkit.errors import EnvironmentProblem

QEMU = "qemu-system-x86_64"
SPIN_SECTOR = b"\xeb\xfe" + bytes(508) + b"\x55\xaa"  # jmp $ ; boot signature


class QemuCase(BaseModel):
    guests: int
    core: int
    measured_pct: list[float]  # congestion of each guest's vCPU
    fair_share_pct: float
    worst_error_pp: float
    runnable_pct: float  # mean (run + wait)/Δt of the vCPUs: ~100 shows they spun
    other_load_pct: float  # core busy not explained by the guests' vCPUs
    core_lost_pct: float  # irq + softirq + steal on that core


def available() -> bool:
    return shutil.which(QEMU) is not None


@contextmanager
def spinning_guests(count: int, core: int, prefix: str = "spin") -> Iterator[list[int]]:
    """`count` QEMU processes pinned to `core`, each with one vCPU spinning; yields their pids once every vCPU
    thread is named (QEMU names them as it creates them, there is no event to wait on: poll for ≤ 10 s)."""
    if not available():
        raise EnvironmentProblem(f"{QEMU} is not installed")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvmkit-spin-")))
        disk = folder / "spin.img"
        disk.write_bytes(SPIN_SECTOR)
        procs: list[subprocess.Popen[bytes]] = []
        for i in range(count):
            argv = ["taskset", "-c", str(core), QEMU, "-accel", "tcg", "-display", "none", "-nodefaults",
                    "-m", "32", "-name", f"guest={prefix}-{i},debug-threads=on",
                    "-drive", f"file={disk},format=raw,if=ide,snapshot=on"]  # fmt: skip
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(proc.wait)
            stack.callback(proc.kill)
            procs.append(proc)
        pids = [p.pid for p in procs]
        deadline = time.monotonic() + 10
        with ProcReader(pids=pids) as reader:
            while True:
                vms = reader.read().vms
                named = sum(any(t.cls.kind is ThreadKind.VCPU for t in vm.threads) for vm in vms)
                if named == count:
                    break
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"only {named} of {count} QEMU guests started their vCPU")
                time.sleep(0.05)
        yield pids


def fair_share_case(guests: int, core: int, seconds: float = 2.0) -> QemuCase:
    with spinning_guests(guests, core) as pids, Collector(ProcReader(pids=pids)) as collector:
        time.sleep(0.3)  # past SeaBIOS, into the spin
        collector.sample()
        ticks0 = core_ticks([core])
        time.sleep(seconds)
        report = collector.sample()
        ticks1 = core_ticks([core])
    assert report is not None
    vcpus = [v for vm in report.vms for v in vm.vcpus]
    if len(vcpus) != guests:
        raise EnvironmentProblem(f"measured {len(vcpus)} of {guests} guest vCPUs: {report.skipped}")
    busy, total, lost = (after - before for after, before in zip(ticks1, ticks0, strict=True))
    lost_pct = 100.0 * lost / total if total else 0.0
    ours = sum(v.utilisation_pct for v in vcpus)
    fair = 100.0 * (guests - 1) / guests
    measured = [v.congestion_pct for v in vcpus]
    return QemuCase(
        guests=guests,
        core=core,
        measured_pct=measured,
        fair_share_pct=round(fair, 3),
        worst_error_pp=round(max(abs(m - fair) for m in measured), 3),
        runnable_pct=round(sum(v.utilisation_pct + v.congestion_pct for v in vcpus) / len(vcpus), 3),
        other_load_pct=round(max(0.0, 100.0 * busy / total - lost_pct - ours), 2) if total else 0.0,
        core_lost_pct=round(lost_pct, 2),
    )
