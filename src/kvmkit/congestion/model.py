"""Records of kvmkit congestion.

Two layers, kept apart on purpose: *readings* are what /proc said at one instant (cumulative counters,
frozen dataclasses, never printed), *reports* are what happened between two readings (percentages,
pydantic models: the same objects `sample --json` prints, the history file stores and `advise`/`policy`
read back).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, Field

from kvmkit.sampling.procfiles import PsiReading

REPORT_VERSION = 1


class ThreadKind(StrEnum):
    VCPU = "vcpu"
    EMULATOR = "emulator"
    IOTHREAD = "iothread"
    VHOST = "vhost"


@dataclass(frozen=True, slots=True)
class ThreadClass:
    """What a QEMU thread is; `label` is what the exporter uses (vCPU number, iothread id, thread name)."""

    kind: ThreadKind
    label: str
    vcpu: int | None = None


class ThreadReading(NamedTuple):
    """One thread's counters at one instant (a NamedTuple: 500 of them are built every second)."""

    tid: int
    name: str
    cls: ThreadClass
    run_ns: int
    wait_ns: int
    cpu: int | None = None  # last CPU it ran on; only read when the host has more than one NUMA node
    # vCPUs only: throttled time of the cgroup holding this thread (libvirt: <vm>/vcpuN), cpu.stat; 0 in the
    # root cgroup (never throttled); None when unreadable. Run delay counts it: the vCPU waits for its own quota.
    throttled_ns: int | None = None


@dataclass(frozen=True, slots=True)
class CgroupReading:
    path: str
    psi: PsiReading | None
    nr_periods: int | None
    nr_throttled: int | None
    throttled_ns: int | None


@dataclass(frozen=True, slots=True)
class VmReading:
    pid: int
    domain: str
    threads: tuple[ThreadReading, ...]
    cgroup: CgroupReading | None


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The host's `cpu` line of /proc/stat, in USER_HZ ticks over all CPUs."""

    busy: int  # user + nice + system + irq + softirq (not idle, iowait or steal)
    steal: int  # time the hypervisor under this host ran something else (nested or cloud hosts)
    total: int


@dataclass(frozen=True, slots=True)
class Skip:
    """Something that could not be measured and why: printed, exported, never raised."""

    what: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reading:
    mono_ns: int  # time.monotonic_ns() when the reading started
    wall: float  # time.time() at the same instant, for records
    pcpus: int
    numa_nodes: dict[int, frozenset[int]]  # node → CPUs; empty when one node (nothing to break down)
    host_psi: PsiReading | None
    vms: tuple[VmReading, ...]
    skipped: tuple[Skip, ...]
    cpu: CpuTimes | None = None


# ---- reports --------------------------------------------------------------------------------


class SkipReport(BaseModel):
    what: str
    reason: str


class VcpuReport(BaseModel):
    vcpu: int
    tid: int
    utilisation_pct: float
    congestion_pct: float  # run delay / interval: contention + throttling (what the guest sees as steal)
    contention_pct: float | None = None  # run delay minus the vCPU cgroup's throttled time: waiting for others
    throttled_pct: float | None = None  # self-inflicted: its own quota (None: throttling unreadable)

    @property
    def slo_pct(self) -> float:
        """What SLOs judge: contention where throttling is known (and in histories that have it), else congestion."""
        return self.congestion_pct if self.contention_pct is None else self.contention_pct


class ThreadGroupReport(BaseModel):
    """Emulator, iothreads or vhost workers of one VM: percent of one CPU, summed over the group's threads."""

    threads: int = 0
    utilisation_pct: float = 0.0
    congestion_pct: float = 0.0


class CgroupReport(BaseModel):
    path: str
    psi_some_pct: float | None = None  # share of the interval some task of the VM waited for CPU
    psi_full_pct: float | None = None
    throttled_pct: float | None = None  # throttled time / interval, summed over the VM's cgroups (vCPUs …)
    throttled_periods: int | None = None


class VmReport(BaseModel):
    domain: str
    pid: int
    vcpus_allocated: int
    utilisation_pct: float  # mean over its vCPUs
    congestion_pct: float  # mean over its vCPUs: the steal an average vCPU of this guest saw
    congestion_max_pct: float  # the worst vCPU
    vcpus: list[VcpuReport]
    contention_pct: float | None = None  # mean over its vCPUs of run delay minus throttled time
    contention_max_pct: float | None = None
    throttled_pct: float | None = None  # mean over its vCPUs of time throttled by their own quota

    @property
    def slo_pct(self) -> float:
        """What SLOs judge: contention (not self-inflicted throttling) where known, else congestion."""
        return self.congestion_pct if self.contention_pct is None else self.contention_pct

    emulator: ThreadGroupReport
    iothreads: ThreadGroupReport
    vhost: ThreadGroupReport
    cgroup: CgroupReport | None = None


class NumaReport(BaseModel):
    node: int
    pcpus: int
    vcpus_last_seen: int
    congestion_pct: float


class HostReport(BaseModel):
    pcpus: int
    vcpus_allocated: int
    oversubscription: float  # allocated vCPUs per physical CPU
    vcpu_demand: float  # Σ(run + wait − own throttling) of vCPUs over the interval, in CPUs: what the guests
    # wanted and were entitled to (time a vCPU waited for its own quota is not demand more CPUs could serve)
    vcpu_load_pct: float  # Σ run of vCPUs as percent of the host's CPUs
    congestion_pct: float  # mean over all vCPUs on the host
    congestion_p95_pct: float  # 95th percentile over vCPUs
    contention_pct: float | None = None  # like congestion_pct, without the vCPUs' own throttling
    contention_p95_pct: float | None = None
    throttled_pct: float | None = None  # mean over vCPUs

    @property
    def slo_pct(self) -> float:
        """Mean vCPU contention where throttling is known (and in histories that have it), else congestion."""
        return self.congestion_pct if self.contention_pct is None else self.contention_pct
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    psi_some_pct: float | None  # over this interval, from the PSI total
    qemu_load_pct: float | None = None  # Σ run of all QEMU threads (vCPU, emulator, io, vhost), % of host CPUs
    other_load_pct: float | None = None  # host CPU busy outside QEMU (from /proc/stat), % of host CPUs
    steal_pct: float | None = None  # host CPUs taken by the hypervisor under this host, % of host CPUs
    numa: list[NumaReport] = Field(default_factory=list)


class IntervalReport(BaseModel):
    version: int = REPORT_VERSION
    time: float  # wall clock at the end of the interval (epoch seconds)
    interval_s: float
    host: HostReport
    vms: list[VmReport]
    skipped: list[SkipReport] = Field(default_factory=list)
