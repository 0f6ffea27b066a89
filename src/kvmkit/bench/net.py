"""`kvmkit bench net`: the network path measured with iperf3 and sockperf, reference first.

Per path: warm-up (one untimed TCP run, and iperf3's own --omit of the first second), then `runs` rounds of
 - TCP throughput with `streams` parallel streams (Gbit/s received),
 - small-packet rate: UDP with 64-byte payloads at full speed (packets/s received, loss),
 - request/response latency: sockperf ping-pong over TCP, 64-byte messages, full round trip percentiles,
and around each TCP run the CPU time of the QEMU process (+ vhost threads, if any) and of the whole host, as
cores per Gbit/s. Every figure is printed as median with its low–high spread; the netns ↔ netns path is the anchor
each other path is given as a ratio of. The backend that carried the packets is named in every path's result."""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kvmkit.bench import netparse
from kvmkit.bench.netparse import Spread
from kvmkit.bench.netpaths import NetPath, host_busy_seconds
from kvmkit.rss import peak_rss_mib

IPERF_PORT = 5201
SOCKPERF_PORT = 11111
SMALL_PACKET = 64


@dataclass(frozen=True)
class NetOptions:
    streams: int = 4
    runs: int = 3
    seconds: float = 3.0
    warmup_s: float = 1.0
    latency_mps: int = 5000  # sockperf's message rate cap: a bounded sample keeps a 128 MiB guest from OOM


@dataclass
class PathResult:
    path: str
    backend: str
    gbit_s: Spread
    retransmits: int
    small_pps: Spread
    small_lost_percent: float
    latency_us: dict[str, float]  # percentile → median over runs (full round trip)
    latency_p99_us: Spread
    host_cpu_cores_per_gbit: Spread
    qemu_cpu_cores_per_gbit: Spread | None
    vs_reference_gbit: float | None = None
    vs_reference_p50: float | None = None


@dataclass
class NetRun:
    schema: str
    started_at: datetime
    host: str
    options: NetOptions
    paths: list[PathResult]
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0


def _port_argv(ip: str, port: int) -> list[str]:
    return ["-c", ip, "-p", str(port)]


def _tcp(path: NetPath, opts: NetOptions, seconds: float) -> tuple[netparse.TcpFigures, float, float | None]:
    """One TCP run; (figures, host CPU cores, QEMU CPU cores) over its wall time."""
    argv = ["iperf3", *_port_argv(path.server_ip, IPERF_PORT), "-P", str(opts.streams), "-t", f"{seconds:g}",
            "-O", "1", "-J"]
    host0, qemu0, t0 = host_busy_seconds(), path.cpu_seconds(), time.monotonic()
    out = path.client(argv, timeout_s=seconds + 60)
    wall = time.monotonic() - t0
    host1, qemu1 = host_busy_seconds(), path.cpu_seconds()
    qemu_cores = (qemu1 - qemu0) / wall if qemu0 is not None and qemu1 is not None else None
    return netparse.iperf_tcp(out), (host1 - host0) / wall, qemu_cores


def _udp(path: NetPath, opts: NetOptions) -> netparse.UdpFigures:
    argv = ["iperf3", *_port_argv(path.server_ip, IPERF_PORT), "-u", "-b", "0", "-l", str(SMALL_PACKET), "-t",
            f"{opts.seconds:g}", "-J"]
    return netparse.iperf_udp(path.client(argv, timeout_s=opts.seconds + 60))


def _latency(path: NetPath, opts: NetOptions) -> dict[str, float]:
    argv = ["sockperf", "ping-pong", "-i", path.server_ip, "-p", str(SOCKPERF_PORT), "--tcp", "-t",
            f"{max(1, round(opts.seconds))}", "-m", str(SMALL_PACKET), "--mps", str(opts.latency_mps),
            "--full-rtt"]
    return netparse.sockperf_latency(path.client(argv, timeout_s=opts.seconds + 60))


def _per_gbit(cores: list[float], gbit: list[float]) -> Spread:
    return netparse.spread([c / g if g > 0 else 0.0 for c, g in zip(cores, gbit, strict=True)])


def measure_path(path: NetPath, opts: NetOptions, progress: Callable[[str], None] = lambda _m: None) -> PathResult:
    servers = [path.serve(["iperf3", "-s", "-B", path.server_ip, "-p", str(IPERF_PORT), "--forceflush"],
                          "Server listening", IPERF_PORT)]
    try:
        servers.append(path.serve(["sockperf", "server", "-i", path.server_ip, "-p", str(SOCKPERF_PORT), "--tcp"],
                                  "using", SOCKPERF_PORT))
        _tcp(path, opts, opts.warmup_s + 1)  # warm-up: caches, ARP, TCP windows; not counted
        gbit, host_cores, qemu_cores, retrans, pps, lost, lat = [], [], [], 0, [], [], []
        for number in range(1, opts.runs + 1):
            tcp, host_c, qemu_c = _tcp(path, opts, opts.seconds)
            gbit.append(tcp.gbit_s)
            host_cores.append(host_c)
            if qemu_c is not None:
                qemu_cores.append(qemu_c)
            retrans += tcp.retransmits
            udp = _udp(path, opts)
            pps.append(udp.pps)
            lost.append(udp.lost_percent)
            lat.append(_latency(path, opts))
            progress(f"{path.name}: run {number}/{opts.runs}: {tcp.gbit_s:.2f} Gbit/s, {udp.pps:,.0f} pps, "
                     f"p99 {lat[-1]['p99']:.0f} µs")
    finally:
        for server in servers:
            server.stop()
    keys = sorted(set.intersection(*(set(run) for run in lat)), key=_percentile_order)
    return PathResult(
        path=path.name, backend=path.backend, gbit_s=netparse.spread(gbit), retransmits=retrans,
        small_pps=netparse.spread(pps), small_lost_percent=statistics.median(lost),
        latency_us={k: statistics.median(run[k] for run in lat) for k in keys},
        latency_p99_us=netparse.spread([run["p99"] for run in lat]),
        host_cpu_cores_per_gbit=_per_gbit(host_cores, gbit),
        qemu_cpu_cores_per_gbit=_per_gbit(qemu_cores, gbit) if len(qemu_cores) == len(gbit) else None,
    )


def _percentile_order(key: str) -> float:
    return {"min": -1.0, "max": 1000.0}.get(key, float(key[1:]) if key[1:].replace(".", "").isdigit() else 999)


def with_reference(results: list[PathResult]) -> list[PathResult]:
    """Each path's throughput and median latency as a ratio of the first path's (the reference) — pure."""
    if not results:
        return results
    ref = results[0]
    for r in results:
        r.vs_reference_gbit = r.gbit_s.median / ref.gbit_s.median if ref.gbit_s.median else None
        p50, ref_p50 = r.latency_us.get("p50"), ref.latency_us.get("p50")
        r.vs_reference_p50 = p50 / ref_p50 if p50 and ref_p50 else None
    return results


def run(paths: list[NetPath], opts: NetOptions, notes: list[str], progress: Callable[[str], None] = lambda _m: None
        ) -> NetRun:
    """Measure every path in turn (each path brought up by the caller); the first is the reference."""
    started, t0 = datetime.now(UTC), time.monotonic()
    results = [measure_path(p, opts, progress) for p in paths]
    return NetRun(schema="kvmkit.bench.net/1", started_at=started, host=socket.gethostname(), options=opts,
                  paths=with_reference(results), notes=notes, wall_s=round(time.monotonic() - t0, 1),
                  peak_rss_mib=peak_rss_mib())
