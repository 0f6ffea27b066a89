"""Records of kvmkit memory.

Readings are what the kernel and libvirt said at one instant (cumulative counters and levels, frozen dataclasses);
reports are what `sample --json` prints, the history stores and advise/policy read back (pydantic). A reading
carries `reasons` (field → why it could not be read); calc turns every such field into a null next to its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from kvmkit.sampling.procfiles import PsiReading

REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class KsmReading:
    run: int  # 0 stopped, 1 running, 2 unmerging
    pages_sharing: int  # page sites sharing a KSM page: the pages saved
    pages_shared: int  # KSM pages in use
    zero_pages: int | None  # merged with the kernel zero page (use_zero_pages=1), counted apart since 6.x


@dataclass(frozen=True, slots=True)
class HostReading:
    mono_ns: int
    wall: float
    page_size: int
    meminfo: dict[str, int]  # bytes (kB fields × 1024) or counts (HugePages_*)
    pswpin: int | None  # pages swapped in since boot (/proc/vmstat)
    pswpout: int | None
    psi: PsiReading | None
    ksm: KsmReading | None
    ksmd_run_ns: int | None  # CPU time of the ksmd kernel thread (schedstat)
    zswap_enabled: bool | None
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RamSplit:
    """From /proc/PID/smaps: the resident guest RAM mapping(s) against the rest of the QEMU process."""

    guest_ram_rss: int  # resident guest RAM, hugetlb pages included
    hugetlb_bytes: int  # the part of it in hugetlb pages (not counted in RSS)
    rss: int
    pss: int
    hugepage_backed: bool  # the guest RAM mapping uses pages > 4 KiB (hugetlbfs)
    thp_bytes: int  # AnonHugePages inside the guest RAM mapping(s)
    mono_ns: int  # when smaps was read (it is refreshed less often than the counters: it costs)


@dataclass(frozen=True, slots=True)
class CgroupMemReading:
    v2_path: str | None
    psi_some_us: int | None  # memory.pressure totals (µs): only the totals are needed per VM
    psi_full_us: int | None
    oom_kill: int | None
    high_events: int | None
    max_events: int | None
    swap_in_pages: int | None  # memory.stat pswpin (v2) or workingset_refault_anon (an estimate)
    swap_in_source: str | None


@dataclass(frozen=True, slots=True)
class BalloonReading:
    """libvirt's bulk balloon stats of one domain; guest fields are None unless the stats period is on."""

    present: bool  # a balloon device (memballoon model other than none)
    current_bytes: int | None
    maximum_bytes: int | None
    guest_available_bytes: int | None  # MemAvailable inside the guest ("usable")
    guest_total_bytes: int | None  # MemTotal inside the guest ("available" in libvirt's naming)
    guest_unused_bytes: int | None  # MemFree inside the guest
    guest_major_faults: int | None
    guest_swap_in_bytes: int | None
    guest_swap_out_bytes: int | None
    guest_stats: bool  # the guest has sent stats (driver loaded and a stats period set)


@dataclass(frozen=True, slots=True)
class VmReading:
    pid: int
    domain: str
    configured_bytes: int | None
    rss_bytes: int | None
    major_faults: int | None
    split: RamSplit | None
    cgroup: CgroupMemReading | None
    balloon: BalloonReading | None
    reasons: dict[str, str] = field(default_factory=dict)
    ksm_merging_pages: int | None = None  # /proc/PID/ksm_merging_pages: its pages KSM merged (read while KSM has any)


@dataclass(frozen=True, slots=True)
class Reading:
    host: HostReading
    vms: tuple[VmReading, ...]


# ---- reports --------------------------------------------------------------------------------


class HostDetail(BaseModel):
    """What the issue's host keys do not hold: levels and counts behind the headline figures."""

    swap_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_out_bytes_per_s: float | None = None
    psi_some_pct: float | None = None  # over this interval, from the PSI total
    psi_full_pct: float | None = None
    vm_balloon_bytes: int | None = None  # Σ current balloon size of VMs that have one (configured otherwise)
    balloon_oversubscription: float | None = None  # that sum per byte of RAM
    ksm_pages_sharing: int | None = None
    ksm_pages_shared: int | None = None
    ksm_zero_pages_bytes: int | None = None
    ksm_running: bool | None = None
    thp_anon_bytes: int | None = None
    hugepages_total_bytes: int | None = None
    hugepages_free_bytes: int | None = None
    zswap_pool_bytes: int | None = None
    zswapped_bytes: int | None = None


class HostMemory(BaseModel):
    ram_bytes: int | None
    vm_configured_bytes: int
    oversubscription: float | None  # Σ configured VM memory / host RAM
    available_bytes: int | None
    swap_in_bytes_per_s: float | None
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    ksm_saved_bytes: int | None  # pages_sharing × page size
    ksm_cpu_pct: float | None  # ksmd's share of one CPU over the interval
    null_reasons: dict[str, str] = Field(default_factory=dict)
    detail: HostDetail = Field(default_factory=HostDetail)


class VmDetail(BaseModel):
    pss_bytes: int | None = None
    guest_ram_rss_bytes: int | None = None
    split_age_s: float | None = None  # how old the smaps split is (it is refreshed less often than the rest)
    hugepage_backed: bool | None = None
    thp_bytes: int | None = None
    ksm_merged_bytes: int | None = None  # the VM's pages merged by KSM (its share of the host's saving and more)
    balloon_maximum_bytes: int | None = None
    guest_total_bytes: int | None = None
    guest_unused_bytes: int | None = None
    guest_major_faults_per_s: float | None = None
    guest_swap_in_bytes_per_s: float | None = None
    guest_swap_out_bytes_per_s: float | None = None
    memory_high_events: int | None = None
    memory_max_events: int | None = None
    swap_in_source: str | None = None
    cgroup: str | None = None


class VmMemory(BaseModel):
    domain: str
    pid: int
    configured_bytes: int | None
    balloon_bytes: int | None
    rss_bytes: int | None
    overhead_bytes: int | None  # QEMU RSS outside the guest RAM mapping(s): TCG cache, heap, libraries …
    major_faults_per_s: float | None
    swap_in_bytes_per_s: float | None
    psi_some_pct: float | None  # share of the interval some task of the VM stalled on memory
    psi_full_pct: float | None
    oom_events: int | None  # OOM kills in the VM's memory cgroup (cumulative)
    guest_available_bytes: int | None  # MemAvailable inside the guest (balloon stats)
    null_reasons: dict[str, str] = Field(default_factory=dict)
    detail: VmDetail = Field(default_factory=VmDetail)


class MemoryReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = REPORT_VERSION
    time: float  # wall clock at the end of the interval (epoch seconds)
    interval_s: float
    host: HostMemory
    vms: list[VmMemory]
