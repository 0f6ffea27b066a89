"""Serve the FAKE StorPool API in its own process (benchmarks and the lab: client and server must not share one
GIL). Writes {"host", "port", "token"} to --ready (0600) once listening; SIGTERM stops it and removes what it made."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

from kvmkit.benchmarks.storpool_fake.server import FakeStorPoolApi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a FAKE StorPool API for kvmkit's tests, benchmarks and lab")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--cluster-id", default="fake.t")
    args = parser.parse_args(argv)
    fake = FakeStorPoolApi(args.root, latency_s=args.latency_ms / 1000, cluster_id=args.cluster_id).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        fd = os.open(args.ready, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": fake.host, "port": fake.port, "token": fake.token}, fh)
        stop.wait()
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
