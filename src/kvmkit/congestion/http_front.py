"""The exporter's HTTP front: slow or idle clients cost a socket, never a thread, and never starve a real scrape.

A thread per connection lets 32 clients that each send one header line every 2 s hold every thread while every
real scrape fails (a per-read socket timeout never fires for them). Here one asyncio loop reads request heads
without threads, each under a whole-request deadline (the head must arrive within HEAD_DEADLINE_S of the
accept, and the response must be taken within WRITE_DEADLINE_S); only a complete `GET /metrics` reaches the small
fixed pool of render threads. Open connections are capped; past the cap a new connection evicts the one that has
waited longest for its head once that one is slow (SLOW_AFTER_S), so the newest scrape always gets in, while a
burst of fast scrapes may exceed the cap up to a hard limit. Nothing but GET and HEAD of / and /metrics is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kvmkit.errors import EnvironmentProblem

log = logging.getLogger(__name__)
HEAD_DEADLINE_S = 5.0
WRITE_DEADLINE_S = 10.0
MAX_HEAD_BYTES = 8192
RENDER_THREADS = 2
SLOW_AFTER_S = 0.5  # a head still incomplete after this is a slow client's, and may be evicted for a newcomer
HARD_CAP_FACTOR = 4  # a burst of fast clients may exceed the cap up to this many times it
INDEX = b'<html><body><a href="/metrics">kvmkit metrics</a></body></html>'

Render = Callable[[], tuple[bytes, str]]  # → (body, content type)


class HttpFront:
    """A bound listening socket served by an asyncio loop in a daemon thread; `shutdown()` then `server_close()`
    (the socketserver names the callers already use)."""

    def __init__(self, address: str, port: int, render: Render, max_connections: int = 64) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            self._sock = socket.create_server((address, port), family=family, backlog=1024)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot listen on {address}:{port}: {exc.strerror}") from None
        self._sock.setblocking(False)
        self.server_port: int = self._sock.getsockname()[1]
        self.render, self.max_connections = render, max_connections
        self.evicted = 0  # slow clients dropped to let a newer connection in
        self.timed_out = 0  # clients whose head or response missed its deadline
        self._waiting: dict[asyncio.StreamWriter, float] = {}  # connections still reading their head → accepted at
        self._open = 0
        self._pool = ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="kvmkit-render")
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name="kvmkit-exporter", daemon=True)
        self.thread.start()
        started.wait(10)

    # the rejected count of the thread-per-connection server: what tests and logs read
    @property
    def rejected(self) -> int:
        return self.evicted + self.timed_out

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(started))
        self._loop.close()

    async def _serve(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=MAX_HEAD_BYTES)
        started.set()
        async with server:
            await self._stop.wait()
            server.close()
            for writer in list(self._waiting):
                writer.close()

    def shutdown(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    def server_close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self._sock.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        if self._open > self.max_connections and not self._evict_slowest() and self._open > HARD_CAP_FACTOR * \
                self.max_connections:
            self._open -= 1  # a burst of fast clients past even the hard cap: this one waits for a retry
            self.evicted += 1
            writer.transport.abort()
            return
        self._waiting[writer] = time.monotonic()
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_DEADLINE_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                self.timed_out += 1
                return
            finally:
                self._waiting.pop(writer, None)
            status, content_type, body, send_body = await self._answer(head)
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode() +
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" +
                         (body if send_body else b""))
            try:
                await asyncio.wait_for(writer.drain(), WRITE_DEADLINE_S)
            except (TimeoutError, ConnectionError):
                self.timed_out += 1
        finally:
            self._open -= 1
            writer.close()  # the transport flushes what is left and closes; nobody waits on a slow reader

    def _evict_slowest(self) -> bool:
        """Drop the connection that has waited longest for its head, if it is slow (a burst of real scrapes,
        whose heads arrive within milliseconds, is let past the cap instead)."""
        if not self._waiting:
            return False
        oldest = min(self._waiting, key=self._waiting.__getitem__)
        if time.monotonic() - self._waiting[oldest] < SLOW_AFTER_S:
            return False
        self._waiting.pop(oldest)
        oldest.transport.abort()  # its readuntil fails at once; the slot is free for the newcomer
        self.evicted += 1
        return True

    async def _answer(self, head: bytes) -> tuple[bytes, str, bytes, bool]:
        request_line = head.split(b"\r\n", 1)[0].split()
        if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/1."):
            return b"400 Bad Request", "text/plain", b"bad request\n", True
        method, target = request_line[0], request_line[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", "text/plain", b"GET /metrics\n", True
        send_body = method == b"GET"
        if target == b"/metrics":
            try:
                body, content_type = await asyncio.get_running_loop().run_in_executor(self._pool, self.render)
            except Exception:  # a collector's failure is a 500 for this scrape, not a dead exporter
                log.exception("exporter: rendering /metrics failed")
                return b"500 Internal Server Error", "text/plain", b"collector failed\n", send_body
            return b"200 OK", content_type, body, send_body
        if target == b"/":
            return b"200 OK", "text/html", INDEX, send_body
        return b"404 Not Found", "text/plain", b"not found: try /metrics\n", send_body
