"""Prometheus exporter: cumulative counters straight from schedstat, so Prometheus does the rates.

A custom collector reads /proc at scrape time; concurrent scrapes within `max_age_s` share one reading
(one lock, one cached reading: nothing accumulates between scrapes). Per-group counters (emulator,
iothreads, vhost) sum threads that come and go; to keep them monotonic, the last counters of a departed
thread are folded into a per-VM base, and those bases are dropped with the VM — state is bounded by the
live threads and VMs.

Only /metrics (and / with a link) are served; any other path is a 404. The HTTP front (http_front.py) reads
request heads without threads under a whole-request deadline and caps open connections, evicting the slowest, so
idle or slow clients cannot starve a scrape. `kvmkit serve` puts the memory family (and any `register`ed
collector) in the same registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvmkit.congestion.http_front import HttpFront
from kvmkit.congestion.model import Reading, ThreadKind
from kvmkit.congestion.procfs import ProcReader
from kvmkit.sampling.sampler import SharedReading

log = logging.getLogger(__name__)
_GROUPS = {ThreadKind.EMULATOR: "emulator", ThreadKind.IOTHREAD: "iothread", ThreadKind.VHOST: "vhost"}


class _MonotonicSums:
    """Σ counters over a changing set of threads, kept monotonic by folding in departed threads."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, str, str, int], tuple[int, int]] = {}  # (pid, kind, label, tid)
        self._base: dict[tuple[int, str, str], tuple[int, int]] = {}  # (pid, kind, label)

    def update(self, reading: Reading) -> dict[tuple[int, str, str], tuple[int, int]]:
        live: dict[tuple[int, str, str, int], tuple[int, int]] = {}
        for vm in reading.vms:
            for t in vm.threads:
                if t.cls.kind in _GROUPS:
                    label = t.cls.label if t.cls.kind is ThreadKind.IOTHREAD else ""
                    live[(vm.pid, _GROUPS[t.cls.kind], label, t.tid)] = (t.run_ns, t.wait_ns)
        for key in self._last.keys() - live.keys():
            run, wait = self._last[key]
            base = self._base.get(key[:3], (0, 0))
            self._base[key[:3]] = (base[0] + run, base[1] + wait)
        self._last = live
        pids = {vm.pid for vm in reading.vms}
        self._base = {k: v for k, v in self._base.items() if k[0] in pids}
        sums = dict(self._base)
        for key, (run, wait) in live.items():
            base = sums.get(key[:3], (0, 0))
            sums[key[:3]] = (base[0] + run, base[1] + wait)
        return sums


class CongestionCollector(Collector):
    def __init__(self, reader: ProcReader, max_age_s: float = 1.0) -> None:
        self._reader = reader
        self._sums = _MonotonicSums()
        self._shared = SharedReading(self._read, max_age_s)

    def _read(self) -> tuple[Reading, dict[tuple[int, str, str], tuple[int, int]]]:
        reading = self._reader.read()
        return reading, self._sums.update(reading)  # under the shared reading's lock: one update per reading

    def collect(self) -> Iterator[Metric]:
        (reading, sums), cost_s = self._shared.get()
        names = {vm.pid: vm.domain for vm in reading.vms}
        run = CounterMetricFamily(
            "kvmkit_vcpu_run_seconds", "Time the vCPU thread ran on a CPU.", labels=["vm", "vcpu"]
        )
        delay = CounterMetricFamily(
            "kvmkit_vcpu_delay_seconds",
            "Time the vCPU thread was runnable but waited for a CPU (steal seen by the guest).",
            labels=["vm", "vcpu"],
        )
        throttled = CounterMetricFamily(
            "kvmkit_vcpu_throttled_seconds",
            "Time the vCPU's own cgroup (libvirt: <vm>/vcpuN) was throttled by its CPU quota: self-inflicted, part of"
            " delay; contention = delay - throttled. 0 in the root cgroup; absent where unreadable.",
            labels=["vm", "vcpu"],
        )
        vcpus = GaugeMetricFamily("kvmkit_vm_vcpus", "vCPU threads of the VM.", labels=["vm"])
        for vm in reading.vms:
            count = 0
            for t in vm.threads:
                if t.cls.kind is ThreadKind.VCPU:
                    count += 1
                    run.add_metric([vm.domain, t.cls.label], t.run_ns / 1e9)
                    delay.add_metric([vm.domain, t.cls.label], t.wait_ns / 1e9)
                    if t.throttled_ns is not None:
                        throttled.add_metric([vm.domain, t.cls.label], t.throttled_ns / 1e9)
            vcpus.add_metric([vm.domain], count)
        yield from (run, delay, throttled, vcpus)
        yield from self._groups(sums, names)
        yield from self._cgroups(reading)
        yield from self._host(reading, cost_s)

    @staticmethod
    def _groups(sums: dict[tuple[int, str, str], tuple[int, int]], names: dict[int, str]) -> Iterator[Metric]:
        for group in _GROUPS.values():
            labels = ["vm", "iothread"] if group == "iothread" else ["vm"]
            help_run = f"Time the VM's {group} threads ran on a CPU (summed over threads)."
            help_delay = f"Time the VM's {group} threads waited for a CPU (summed over threads)."
            run = CounterMetricFamily(f"kvmkit_{group}_run_seconds", help_run, labels=labels)
            delay = CounterMetricFamily(f"kvmkit_{group}_delay_seconds", help_delay, labels=labels)
            for (pid, kind, label), (run_ns, wait_ns) in sorted(sums.items()):
                if kind == group and pid in names:
                    values = [names[pid], label] if group == "iothread" else [names[pid]]
                    run.add_metric(values, run_ns / 1e9)
                    delay.add_metric(values, wait_ns / 1e9)
            yield from (run, delay)

    @staticmethod
    def _cgroups(reading: Reading) -> Iterator[Metric]:
        pressure = CounterMetricFamily(
            "kvmkit_vm_cpu_pressure_seconds",
            "PSI of the VM's cgroup v2: time some/all of its tasks waited for a CPU.",
            labels=["vm", "kind"],
        )
        throttled = CounterMetricFamily(
            "kvmkit_vm_cpu_throttled_seconds",
            "Time the VM's cgroup was throttled by its CPU quota.",
            labels=["vm"],
        )
        for vm in reading.vms:
            cg = vm.cgroup
            if cg is None:
                continue
            if cg.psi is not None:
                pressure.add_metric([vm.domain, "some"], cg.psi.some_total_us / 1e6)
                if cg.psi.full_total_us is not None:
                    pressure.add_metric([vm.domain, "full"], cg.psi.full_total_us / 1e6)
            if cg.throttled_ns is not None:
                throttled.add_metric([vm.domain], cg.throttled_ns / 1e9)
        yield from (pressure, throttled)

    @staticmethod
    def _host(reading: Reading, cost_s: float) -> Iterator[Metric]:
        vcpus = sum(1 for vm in reading.vms for t in vm.threads if t.cls.kind is ThreadKind.VCPU)
        yield GaugeMetricFamily("kvmkit_host_pcpus", "Online CPUs of the host.", value=reading.pcpus)
        yield GaugeMetricFamily("kvmkit_host_vcpus_allocated", "vCPU threads of running VMs.", value=vcpus)
        yield GaugeMetricFamily(
            "kvmkit_host_oversubscription_ratio",
            "Allocated vCPUs per online CPU.",
            value=vcpus / reading.pcpus if reading.pcpus else 0.0,
        )
        if reading.host_psi is not None:
            psi = reading.host_psi
            total = CounterMetricFamily(
                "kvmkit_host_cpu_pressure_seconds", "Host PSI (/proc/pressure/cpu) totals.", labels=["kind"]
            )
            avg = GaugeMetricFamily(
                "kvmkit_host_cpu_pressure_avg10_ratio", "Host PSI 10 s average, 0..1.", labels=["kind"]
            )
            total.add_metric(["some"], psi.some_total_us / 1e6)
            avg.add_metric(["some"], psi.some_avg10 / 100)
            if psi.full_total_us is not None and psi.full_avg10 is not None:
                total.add_metric(["full"], psi.full_total_us / 1e6)
                avg.add_metric(["full"], psi.full_avg10 / 100)
            yield from (total, avg)
        yield GaugeMetricFamily(
            "kvmkit_collector_skipped",
            "Things the last reading could not measure.",
            value=len(reading.skipped),
        )
        yield GaugeMetricFamily("kvmkit_collector_read_seconds", "Wall time of the last /proc reading.", value=cost_s)


MAX_CONNECTIONS = 64  # open connections at once (a thread only renders); the slowest is evicted past it
# Collectors other capabilities add to every exporter kvmkit starts (`kvmkit serve`, `kvmkit congestion serve`):
# one `register(factory)` line in their own module; the factory is called once per exporter.
_REGISTERED: list[Callable[[], Collector]] = []


def register(factory: Callable[[], Collector]) -> None:
    """Add a Prometheus collector (made by `factory`) to every exporter started after this call."""
    _REGISTERED.append(factory)


def start(
    address: str,
    port: int,
    reader: ProcReader | None = None,
    *,
    collectors: Sequence[Collector] | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> tuple[HttpFront, threading.Thread]:
    """Serve in a daemon thread; the caller owns shutdown (server.shutdown(); server.server_close()).

    `collectors` replaces the default (congestion only); registered collectors are always added.
    """
    registry = CollectorRegistry()
    for collector in collectors if collectors is not None else [CongestionCollector(reader or ProcReader())]:
        registry.register(collector)
    for factory in _REGISTERED:
        registry.register(factory())

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    server = HttpFront(address, port, render, max_connections=max_connections)
    return server, server.thread
