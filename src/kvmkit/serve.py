"""`kvmkit serve`: one Prometheus exporter for the congestion, memory and snapshot/backup health families (and
every collector another capability `register`s in kvmkit.congestion.exporter). `kvmkit congestion serve` is the
same command."""

from __future__ import annotations

import threading

import typer

from kvmkit import config
from kvmkit.errors import InvalidInput

app = typer.Typer(add_completion=False, help=__doc__, invoke_without_command=True)


def run(port: int, address: str, uri: str | None, no_libvirt: bool, max_connections: int) -> None:
    """Serve until interrupted: the congestion, memory and health collectors over one bounded HTTP server."""
    from kvmkit.congestion import exporter
    from kvmkit.congestion.procfs import ProcReader
    from kvmkit.health.metrics import collector as health_collector
    from kvmkit.memory.cli import reader as memory_reader
    from kvmkit.memory.exporter import MemoryCollector

    if not 0 <= port < 65536:
        raise InvalidInput(f"--port {port}: not a TCP port")
    if not 1 <= max_connections <= 1024:
        raise InvalidInput(f"--max-connections {max_connections}: give 1 to 1024")
    procs = ProcReader()
    try:
        with memory_reader(None, uri or config.load().libvirt_uri, no_libvirt, live=True) as memory:
            collectors = [exporter.CongestionCollector(procs), MemoryCollector(memory), health_collector()]
            server, _ = exporter.start(address, port, collectors=collectors, max_connections=max_connections)
            typer.echo(f"serving kvmkit metrics (congestion, memory, health) on http://{address}:{server.server_port}/metrics")
            try:
                threading.Event().wait()
            finally:
                server.shutdown()
                server.server_close()
    finally:
        procs.close()


@app.callback()
def serve(
    port: int = typer.Option(9177, help="TCP port."),
    address: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all)."),
    connect: str | None = typer.Option(None, "--connect", "-c",
                                       help="libvirt URI for balloon figures (default: the config's)."),
    uri: str | None = typer.Option(None, "--uri", hidden=True, help="Old name of --connect."),
    no_libvirt: bool = typer.Option(False, "--no-libvirt", help="Do not ask libvirt (no balloon figures)."),
    max_connections: int = typer.Option(64, help="Connections open at once; past it the slowest is dropped."),
) -> None:
    """Prometheus exporter on http://ADDRESS:PORT/metrics until interrupted: congestion, memory and health."""
    run(port, address, connect or uri, no_libvirt, max_connections)
