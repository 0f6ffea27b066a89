"""The Prometheus exporter over real HTTP on 127.0.0.1: content, 404s, and 1,000 concurrent scrapes."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvmkit.benchmarks.congestion import loadgen
from kvmkit.congestion import exporter
from kvmkit.congestion.classify import classify_thread
from kvmkit.congestion.exporter import _MonotonicSums
from kvmkit.congestion.model import Reading, ThreadReading, VmReading
from kvmkit.congestion.procfs import ProcReader


@pytest.fixture
def served() -> Iterator[tuple[int, int]]:
    """An exporter on a free port, with one QEMU-like process (2 vCPUs, 1 busy) to report: (port, pid)."""
    with loadgen("scraped-vm", 2, 1, None, seconds=60) as proc:
        server, thread = exporter.start("127.0.0.1", 0, ProcReader(pids=[proc.pid]))
        try:
            yield server.server_port, proc.pid
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_metrics_carry_vcpu_counters_labelled_by_domain_and_vcpu(served):
    port, _ = served
    status, first = _get(port, "/metrics")
    assert status == 200
    time.sleep(1.2)  # past the shared-reading cache: the busy vCPU's counter must have moved
    _, second = _get(port, "/metrics")

    def samples(text: str) -> dict[tuple[str, tuple], float]:
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    a, b = samples(first), samples(second)
    busy = ("kvmkit_vcpu_run_seconds_total", (("domain", "scraped-vm"), ("vcpu", "0")))
    idle = ("kvmkit_vcpu_run_seconds_total", (("domain", "scraped-vm"), ("vcpu", "1")))
    assert b[busy] - a[busy] > 0.3  # spinning for ~1.2 s, even on a loaded host
    assert b[idle] - a[idle] < 0.05
    assert ("kvmkit_vcpu_delay_seconds_total", busy[1]) in b
    assert b[("kvmkit_vcpu_throttled_seconds_total", busy[1])] == 0  # the root cpu cgroup is never throttled
    assert b[("kvmkit_iothread_run_seconds_total", (("domain", "scraped-vm"), ("iothread", "iothread1")))] >= 0
    assert b[("kvmkit_emulator_run_seconds_total", (("domain", "scraped-vm"),))] >= 0
    assert b[("kvmkit_host_vcpus_allocated", ())] == 2
    assert b[("kvmkit_host_oversubscription_ratio", ())] == pytest.approx(2 / b[("kvmkit_host_pcpus", ())])
    assert ("kvmkit_host_cpu_pressure_seconds_total", (("kind", "some"),)) in b


def test_other_paths_get_404_and_the_root_a_link(served):
    port, _ = served
    assert _get(port, "/nope")[0] == 404
    assert _get(port, "/metrics/../etc/passwd")[0] == 404
    status, body = _get(port, "/")
    assert status == 200 and "/metrics" in body


def test_survives_1000_concurrent_scrapes_in_bounded_time(served):
    port, _ = served
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(pool.map(lambda _: _get(port, "/metrics")[0], range(1000)))
    elapsed = time.monotonic() - started
    assert statuses.count(200) == 1000
    assert elapsed < 10, f"1000 scrapes took {elapsed:.1f} s"
    assert _get(port, "/metrics")[0] == 200  # still alive


def test_group_counters_stay_monotonic_when_threads_come_and_go():
    def reading(threads: list[tuple[int, str, int]]) -> Reading:
        ts = tuple(ThreadReading(tid, name, classify_thread(name), run, 0) for tid, name, run in threads)
        return Reading(0, 0.0, 2, {}, None, (VmReading(1, "vm", ts, None),), ())

    sums = _MonotonicSums()
    first = sums.update(reading([(1, "main", 100), (2, "worker", 50)]))
    assert first[(1, "emulator", "")] == (150, 0)
    second = sums.update(reading([(1, "main", 120)]))  # worker exited: its 50 ns must not vanish
    assert second[(1, "emulator", "")] == (170, 0)
    third = sums.update(reading([(1, "main", 130), (3, "worker", 5)]))
    assert third[(1, "emulator", "")] == (185, 0)
    empty = Reading(0, 0.0, 2, {}, None, (), ())
    assert sums.update(empty) == {}  # the VM is gone: its base is dropped, nothing accumulates


def test_a_port_in_use_is_a_one_line_environment_problem(served):
    from kvmkit.errors import EnvironmentProblem

    port, _ = served
    with pytest.raises(EnvironmentProblem, match=f"cannot listen on 127.0.0.1:{port}"):
        exporter.start("127.0.0.1", port)


def test_idle_connections_cannot_pile_up_threads_and_are_dropped_after_the_timeout(monkeypatch):
    """Issue 15 item 7: each idle connection used to hold a thread forever. Now at most max_connections threads
    serve, each connection times out, and the exporter answers again once the idle clients are gone."""
    import socket
    import threading

    monkeypatch.setattr(exporter._QuietHandler, "timeout", 1.0)
    with loadgen("idle-vm", 1, 0, None, seconds=60) as proc:
        server, thread = exporter.start("127.0.0.1", 0, ProcReader(pids=[proc.pid]), max_connections=4)
        port = server.server_port
        try:
            baseline = threading.active_count()
            idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
            time.sleep(1.5)
            assert threading.active_count() <= baseline + 4  # 40 idle clients, at most 4 handler threads
            started = time.monotonic()
            assert idle[0].recv(1) == b""  # the server hung up on the first idle client (its timeout)
            assert time.monotonic() - started < 2.0
            for sock in idle:
                sock.close()
            deadline = time.monotonic() + 20
            while True:  # the backlog of closed idle clients drains; then scrapes are answered again
                try:
                    if _get(port, "/metrics")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "exporter did not recover after the idle clients left"
            assert server.rejected > 0  # clients beyond the cap were turned away, not given threads
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def test_registered_collectors_join_every_exporter():
    from prometheus_client.metrics_core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class Extra(Collector):
        def collect(self):
            yield GaugeMetricFamily("kvmkit_test_extra", "A collector another capability registered.", value=7)

    monkey = list(exporter._REGISTERED)
    exporter.register(Extra)
    try:
        server, thread = exporter.start("127.0.0.1", 0, collectors=[])
        try:
            status, body = _get(server.server_port, "/metrics")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    finally:
        exporter._REGISTERED[:] = monkey
    assert status == 200 and "kvmkit_test_extra 7.0" in body
