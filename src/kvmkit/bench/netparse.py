"""Reading what iperf3 and sockperf print (pure): throughput, packet rate, latency percentiles, and the spread
of several runs. Their output is untrusted text: bounded, and a missing figure is an error, never a zero."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass

from kvmkit.errors import OperationFailed

MAX_OUTPUT = 8 << 20
SOCKPERF_LINE = re.compile(r"--->\s+(?:percentile\s+([0-9.]+)|<(MAX|MIN)> observation)\s*=\s*([0-9.]+)")


@dataclass(frozen=True)
class TcpFigures:
    gbit_s: float  # received by the server side
    retransmits: int


@dataclass(frozen=True)
class UdpFigures:
    pps: float  # packets the receiver got per second
    lost_percent: float


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    spread_percent: float  # (high − low) / median × 100
    values: tuple[float, ...]


def _json(text: str, what: str) -> dict:
    if len(text) > MAX_OUTPUT:
        raise OperationFailed(f"{what}: output larger than {MAX_OUTPUT} bytes")
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except ValueError as exc:
        raise OperationFailed(f"{what}: not iperf3 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OperationFailed(f"{what}: not iperf3 JSON")
    if data.get("error"):
        raise OperationFailed(f"{what}: iperf3 said: {str(data['error'])[:200]}")
    return data


def iperf_tcp(text: str) -> TcpFigures:
    end = _json(text, "iperf3 TCP").get("end", {})
    try:
        received = end["sum_received"]["bits_per_second"]
        retransmits = end["sum_sent"].get("retransmits", 0)
    except (KeyError, TypeError):
        raise OperationFailed("iperf3 TCP: no end.sum_received in its JSON") from None
    return TcpFigures(gbit_s=float(received) / 1e9, retransmits=int(retransmits))


def iperf_udp(text: str) -> UdpFigures:
    end = _json(text, "iperf3 UDP").get("end", {})
    try:
        total = end["sum"]
        packets, lost = int(total["packets"]), int(total["lost_packets"])
        seconds = float(total["seconds"])
    except (KeyError, TypeError, ValueError):
        raise OperationFailed("iperf3 UDP: no end.sum packets/seconds in its JSON") from None
    if seconds <= 0 or packets <= 0:
        raise OperationFailed("iperf3 UDP: no packets counted")
    return UdpFigures(pps=(packets - lost) / seconds, lost_percent=100.0 * lost / packets)


def sockperf_latency(text: str) -> dict[str, float]:
    """{'p50': µs, 'p90': …, 'p99': …, 'p99.9': …, 'max': …, 'min': …} from sockperf ping-pong's summary."""
    found: dict[str, float] = {}
    for match in SOCKPERF_LINE.finditer(text[:MAX_OUTPUT]):
        percentile, extreme, value = match.groups()
        key = extreme.lower() if extreme else "p" + f"{float(percentile):g}"
        found[key] = float(value)
    missing = {"p50", "p99", "max"} - set(found)
    if missing:
        raise OperationFailed(f"sockperf: no {', '.join(sorted(missing))} in its output")
    return found


def spread(values: list[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    median = statistics.median(values)
    low, high = min(values), max(values)
    return Spread(median=median, low=low, high=high,
                  spread_percent=(high - low) / median * 100 if median else 0.0, values=tuple(values))
