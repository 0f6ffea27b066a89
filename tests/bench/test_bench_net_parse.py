"""bench net's pure parts: iperf3/sockperf output (fixtures captured from the real tools on this host), the spread
of runs, ratios to the reference path, the backend's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmkit.bench import netparse
from kvmkit.bench.net import PathResult, with_reference
from kvmkit.bench.netpaths import check_cidr, check_ip, guest_backend, qemu_pid, vhost_threads
from kvmkit.errors import InvalidInput, OperationFailed

NET = Path(__file__).parent / "fixtures" / "net"


def test_iperf_tcp_reads_the_receivers_rate():
    text = (NET / "iperf3-tcp-2streams.json").read_text()
    figures = netparse.iperf_tcp(text)
    expected = json.loads(text)["end"]["sum_received"]["bits_per_second"] / 1e9
    assert figures.gbit_s == pytest.approx(expected) and figures.gbit_s > 0
    assert figures.retransmits >= 0


def test_iperf_udp_counts_received_packets_per_second():
    text = (NET / "iperf3-udp-64b.json").read_text()
    total = json.loads(text)["end"]["sum"]
    figures = netparse.iperf_udp(text)
    assert figures.pps == pytest.approx((total["packets"] - total["lost_packets"]) / total["seconds"])
    assert figures.lost_percent == pytest.approx(100 * total["lost_packets"] / total["packets"])


def test_iperf_error_and_garbage_are_operation_failures():
    with pytest.raises(OperationFailed, match="unable to connect"):
        netparse.iperf_tcp('{"end": {}, "error": "unable to connect to server: Connection refused"}')
    with pytest.raises(OperationFailed, match="not iperf3 JSON"):
        netparse.iperf_tcp("iperf3: command not found")
    with pytest.raises(OperationFailed, match="sum_received"):
        netparse.iperf_tcp('{"end": {}}')
    with pytest.raises(OperationFailed, match="no packets"):
        netparse.iperf_udp('{"end": {"sum": {"packets": 0, "lost_packets": 0, "seconds": 1}}}')


def test_sockperf_percentiles_are_read_in_microseconds():
    text = (NET / "sockperf-pingpong.txt").read_text()
    lat = netparse.sockperf_latency(text)
    assert {"p50", "p90", "p99", "p99.9", "max", "min"} <= set(lat)
    assert lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert lat["p50"] == pytest.approx(13.520)


def test_sockperf_without_a_summary_fails():
    with pytest.raises(OperationFailed, match="p50"):
        netparse.sockperf_latency("sockperf: Starting test...\nKilled\n")


def test_spread_median_low_high():
    s = netparse.spread([2.0, 1.0, 4.0])
    assert (s.median, s.low, s.high) == (2.0, 1.0, 4.0) and s.spread_percent == pytest.approx(150.0)
    with pytest.raises(ValueError):
        netparse.spread([])


def _result(gbit: float, p50: float) -> PathResult:
    one = netparse.spread([gbit])
    return PathResult(path="p", backend="b", gbit_s=one, retransmits=0, small_pps=one, small_lost_percent=0,
                      latency_us={"p50": p50}, latency_p99_us=one, host_cpu_cores_per_gbit=one,
                      qemu_cpu_cores_per_gbit=None)


def test_every_path_is_a_ratio_of_the_reference():
    results = with_reference([_result(8.0, 10.0), _result(2.0, 50.0)])
    assert results[0].vs_reference_gbit == 1.0 and results[1].vs_reference_gbit == 0.25
    assert results[1].vs_reference_p50 == 5.0


def test_backend_is_named_from_vhost_net_and_the_nic_driver():
    assert guest_backend(True, "").startswith("vhost-net")
    assert "no /dev/vhost-net" in guest_backend(False, "")
    assert "driver name='qemu'" in guest_backend(True, "qemu")


def test_addresses_are_checked():
    assert check_ip("10.0.0.1", "--host-ip") == "10.0.0.1"
    assert check_cidr("10.0.0.2/24", "--guest-ip") == "10.0.0.2/24"
    for bad in ("10.0.0.1; reboot", "-c", ""):
        with pytest.raises(InvalidInput):
            check_ip(bad, "--host-ip")
    with pytest.raises(InvalidInput):
        check_cidr("10.0.0.2/99", "--guest-ip")


def test_qemu_pid_and_vhost_threads_from_a_proc_tree(tmp_path: Path):
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "cmdline").write_bytes(b"/usr/bin/qemu-system-x86_64\0-name\0guest=web1,debug-threads=on\0")
    (tmp_path / "124").mkdir()
    (tmp_path / "124" / "cmdline").write_bytes(b"")
    (tmp_path / "124" / "comm").write_text("vhost-123\n")
    (tmp_path / "self").mkdir()
    assert qemu_pid("web1", tmp_path) == 123 and qemu_pid("db1", tmp_path) is None
    assert vhost_threads(123, tmp_path) == [124]
