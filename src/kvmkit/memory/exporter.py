"""Prometheus collector of the memory family: levels as gauges, the kernel's cumulative counters as counters
(Prometheus does the rates), read at scrape time. Concurrent scrapes within `max_age_s` share one reading; nothing
accumulates between scrapes (the reader keeps only per-VM caches of live VMs).

A field the host cannot give (no swap, no KSM, no balloon, cgroup v1 without memory.events) is simply absent from
its family, and `kvmkit_memory_unavailable{field}` counts the VMs (or the host) for which it is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvmkit.memory.model import Reading
from kvmkit.memory.procfs import MemReader
from kvmkit.sampling.sampler import SharedReading


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


class MemoryCollector(Collector):
    def __init__(self, reader: MemReader, max_age_s: float = 1.0) -> None:
        self._shared = SharedReading(reader.read, max_age_s)

    def collect(self) -> Iterator[Metric]:
        reading, cost_s = self._shared.get()
        yield from self._host(reading)
        yield from self._vms(reading)
        missing: Counter[str] = Counter(reading.host.reasons.keys())
        for vm in reading.vms:
            missing.update(vm.reasons.keys())
        unavailable = _gauge("kvmkit_memory_unavailable", "Host or VMs for which a field is unreadable.", ["field"])
        for field, count in sorted(missing.items()):
            unavailable.add_metric([field], count)
        yield unavailable
        yield GaugeMetricFamily("kvmkit_memory_read_seconds", "Wall time of the last memory reading.", value=cost_s)

    @staticmethod
    def _host(reading: Reading) -> Iterator[Metric]:
        host = reading.host
        info, page = host.meminfo, host.page_size
        memory = _gauge("kvmkit_host_memory_bytes", "Host memory from /proc/meminfo.", ["kind"])
        for kind, key in (("total", "MemTotal"), ("available", "MemAvailable"), ("swap_total", "SwapTotal"),
                          ("swap_free", "SwapFree"), ("anon_hugepages", "AnonHugePages")):  # fmt: skip
            if key in info:
                memory.add_metric([kind], info[key])
        if "HugePages_Total" in info and "Hugepagesize" in info:
            memory.add_metric(["hugepages_total"], info["HugePages_Total"] * info["Hugepagesize"])
            memory.add_metric(["hugepages_free"], info.get("HugePages_Free", 0) * info["Hugepagesize"])
        yield memory
        configured = sum(vm.configured_bytes or 0 for vm in reading.vms)
        yield GaugeMetricFamily("kvmkit_host_vm_configured_bytes", "Σ configured memory of running VMs.",
                                value=configured)  # fmt: skip
        if info.get("MemTotal"):
            yield GaugeMetricFamily("kvmkit_host_memory_oversubscription_ratio",
                                    "Σ configured VM memory per byte of host RAM.", value=configured / info["MemTotal"])
        swap = CounterMetricFamily("kvmkit_host_swap_bytes", "Bytes swapped since boot (/proc/vmstat).", labels=["dir"])
        if host.pswpin is not None and host.pswpout is not None:
            swap.add_metric(["in"], host.pswpin * page)
            swap.add_metric(["out"], host.pswpout * page)
        yield swap
        if host.psi is not None:
            total = CounterMetricFamily("kvmkit_host_memory_pressure_seconds",
                                        "Host memory PSI totals (/proc/pressure/memory).", labels=["kind"])
            avg = _gauge("kvmkit_host_memory_pressure_avg10_ratio", "Host memory PSI 10 s average, 0..1.", ["kind"])
            total.add_metric(["some"], host.psi.some_total_us / 1e6)
            avg.add_metric(["some"], host.psi.some_avg10 / 100)
            if host.psi.full_total_us is not None and host.psi.full_avg10 is not None:
                total.add_metric(["full"], host.psi.full_total_us / 1e6)
                avg.add_metric(["full"], host.psi.full_avg10 / 100)
            yield from (total, avg)
        if host.ksm is not None:
            yield GaugeMetricFamily("kvmkit_host_ksm_saved_bytes", "KSM pages_sharing × page size.",
                                    value=host.ksm.pages_sharing * page)  # fmt: skip
            yield GaugeMetricFamily("kvmkit_host_ksm_shared_bytes", "KSM pages in use (pages_shared × page size).",
                                    value=host.ksm.pages_shared * page)  # fmt: skip
            yield GaugeMetricFamily("kvmkit_host_ksm_running", "1 while ksmd scans.", value=int(host.ksm.run == 1))
        if host.ksmd_run_ns is not None:
            yield CounterMetricFamily("kvmkit_ksmd_cpu_seconds", "CPU time of the ksmd kernel thread.",
                                      value=host.ksmd_run_ns / 1e9)  # fmt: skip

    @staticmethod
    def _vms(reading: Reading) -> Iterator[Metric]:
        page = reading.host.page_size
        d = ["vm"]
        configured = _gauge("kvmkit_vm_memory_configured_bytes", "Memory the VM was started with.", d)
        balloon = _gauge("kvmkit_vm_balloon_bytes", "Current balloon size (libvirt; VMs with a balloon).", d)
        rss = _gauge("kvmkit_vm_rss_bytes", "Resident memory of the QEMU process.", d)
        overhead = _gauge("kvmkit_vm_overhead_bytes", "QEMU RSS outside guest RAM (smaps, refreshed slowly).", d)
        available = _gauge("kvmkit_vm_guest_available_bytes", "MemAvailable inside the guest (balloon stats).", d)
        faults = CounterMetricFamily("kvmkit_vm_major_faults", "Major page faults of the QEMU process.", labels=d)
        swap_in = CounterMetricFamily("kvmkit_vm_swap_in_bytes", "Swap-ins charged to the VM's memory cgroup.",
                                      labels=d)  # fmt: skip
        pressure = CounterMetricFamily("kvmkit_vm_memory_pressure_seconds",
                                       "Memory PSI of the VM's cgroup v2: time some/all of its tasks stalled.",
                                       labels=["vm", "kind"])  # fmt: skip
        oom = CounterMetricFamily("kvmkit_vm_oom_kills", "OOM kills in the VM's memory cgroup.", labels=d)
        events = CounterMetricFamily("kvmkit_vm_memory_limit_events",
                                     "Times the VM's memory cgroup hit memory.high / memory.max (v1: failcnt).",
                                     labels=["vm", "limit"])  # fmt: skip
        for vm in reading.vms:
            name = [vm.domain]
            if vm.configured_bytes is not None:
                configured.add_metric(name, vm.configured_bytes)
            if vm.rss_bytes is not None:
                rss.add_metric(name, vm.rss_bytes)
            if vm.major_faults is not None:
                faults.add_metric(name, vm.major_faults)
            if vm.split is not None:
                overhead.add_metric(name, max(0, vm.split.rss - vm.split.guest_ram_rss + vm.split.hugetlb_bytes))
            if vm.balloon is not None and vm.balloon.current_bytes is not None:
                balloon.add_metric(name, vm.balloon.current_bytes)
            if vm.balloon is not None and vm.balloon.guest_available_bytes is not None:
                available.add_metric(name, vm.balloon.guest_available_bytes)
            cg = vm.cgroup
            if cg is None:
                continue
            if cg.psi_some_us is not None:
                pressure.add_metric([vm.domain, "some"], cg.psi_some_us / 1e6)
                if cg.psi_full_us is not None:
                    pressure.add_metric([vm.domain, "full"], cg.psi_full_us / 1e6)
            if cg.oom_kill is not None:
                oom.add_metric(name, cg.oom_kill)
            if cg.swap_in_pages is not None:
                swap_in.add_metric(name, cg.swap_in_pages * page)
            for limit, count in (("high", cg.high_events), ("max", cg.max_events)):
                if count is not None:
                    events.add_metric([vm.domain, limit], count)
        yield from (configured, balloon, rss, overhead, available, faults, swap_in, pressure, oom, events)
