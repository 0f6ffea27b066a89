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


def test_metrics_carry_vcpu_counters_labelled_by_vm_and_vcpu(served):
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
    busy = ("kvmkit_vcpu_run_seconds_total", (("vcpu", "0"), ("vm", "scraped-vm")))
    idle = ("kvmkit_vcpu_run_seconds_total", (("vcpu", "1"), ("vm", "scraped-vm")))
    assert b[busy] - a[busy] > 0.3  # spinning for ~1.2 s, even on a loaded host
    assert b[idle] - a[idle] < 0.05
    assert ("kvmkit_vcpu_delay_seconds_total", busy[1]) in b
    assert b[("kvmkit_vcpu_throttled_seconds_total", busy[1])] == 0  # the root cpu cgroup is never throttled
    assert b[("kvmkit_iothread_run_seconds_total", (("iothread", "iothread1"), ("vm", "scraped-vm")))] >= 0
    assert b[("kvmkit_emulator_run_seconds_total", (("vm", "scraped-vm"),))] >= 0
    assert b[("kvmkit_host_vcpus_allocated", ())] == 2
    assert b[("kvmkit_host_oversubscription_ratio", ())] == pytest.approx(2 / b[("kvmkit_host_pcpus", ())])
    assert ("kvmkit_host_cpu_pressure_seconds_total", (("kind", "some"),)) in b


def test_other_paths_get_404_and_the_root_a_link(served):
    port, _ = served
    assert _get(port, "/nope")[0] == 404
    assert _get(port, "/metrics/../etc/passwd")[0] == 404
    status, body = _get(port, "/")
    assert status == 200 and "/metrics" in body


def test_survives_1000_concurrent_scrapes(served):
    port, _ = served
    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(pool.map(lambda _: _get(port, "/metrics")[0], range(1000)))
    assert statuses.count(200) == 1000
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


def test_slow_header_clients_cannot_starve_real_scrapes(monkeypatch):
    """Issue 24: 32 clients each sending one header line every 2 s held every handler thread and every real scrape
    failed for 25 s. Now heads are read without threads under a whole-request deadline, and past the connection
    cap the slowest client is evicted: every real scrape is answered while the slow clients keep coming."""
    import socket
    import threading

    from kvmkit.congestion import http_front

    monkeypatch.setattr(http_front, "HEAD_DEADLINE_S", 2.0)
    server, thread = exporter.start("127.0.0.1", 0, collectors=[], max_connections=16)
    port = server.server_port
    stop = threading.Event()
    threads_before = threading.active_count()

    def slow_client() -> None:  # the slow-loris pattern: a connection, then one header line every 0.5 s
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
                    while not stop.wait(0.5):
                        sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                continue  # evicted or timed out: come back, as an attacker would

    attackers = [threading.Thread(target=slow_client, daemon=True) for _ in range(48)]
    try:
        for t in attackers:
            t.start()
        time.sleep(1.0)  # every slot taken by slow clients
        answers = []
        for _ in range(15):
            answers.append(_get(port, "/metrics")[0])
            time.sleep(0.2)
        assert answers == [200] * 15
        assert server.rejected > 0  # slow clients were dropped, by eviction or by the deadline
        assert threading.active_count() <= threads_before + len(attackers) + 2  # no thread per connection
    finally:
        stop.set()
        for t in attackers:
            t.join(5)
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_client_that_never_finishes_its_head_is_dropped_at_the_deadline(monkeypatch):
    import socket

    from kvmkit.congestion import http_front

    monkeypatch.setattr(http_front, "HEAD_DEADLINE_S", 0.5)
    server, thread = exporter.start("127.0.0.1", 0, collectors=[])
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            assert sock.recv(1) == b""  # hung up on, unanswered
        assert server.timed_out == 1
        assert _get(server.server_port, "/nope")[0] == 404
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
