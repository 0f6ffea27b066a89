"""The FAKE StorPool API's HTTP front: `/ctrl/1.0/<Endpoint>[/<arg>]` (and `/ctrl/1.0/MultiCluster/…`, spapi's
_format_path), answering `{"data": …}` or `{"error": {"name", "descr", "transient"}}` (spapi.Api.__call__ and
ApiError), the `Authorization: Storpool v1:<token>` header checked (spapi.Api). The rules are in cluster.py.

Test knobs: `latency_s` (slept per call), `gate` (clear it to hold every VolumeSnapshot handler until it is set
again, so a test can kill a client mid-snapshot), `calls` (every request, in order), `bodies` (every POST body,
in order), `fail_next` (an error, transient or not, for the next calls of an endpoint), `lose_answer` (the call
done, its answer a transient error).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kvmkit.benchmarks.storpool_fake.cluster import DEV_BY_ID, DEV_BY_NAME, FakeApiError, FakeCluster, _Object

PREFIX = "/ctrl/1.0/"
MAX_BODY = 1 << 20


class FakeStorPoolApi(FakeCluster):
    """A FAKE StorPool API on 127.0.0.1 (see the package docstring for what it does and does not model)."""

    def __init__(self, root: Path, *, token: str = "fake-storpool-token-0123456789", devices: bool = True,
                 require_reflink: bool = True, latency_s: float = 0.0, cluster_id: str = "fake.t",
                 client_id: int = 1) -> None:
        super().__init__(root, devices_on=devices, require_reflink=require_reflink, cluster_id=cluster_id,
                         client_id=client_id)
        self.token = token
        self.latency_s = latency_s
        self.gate = threading.Event()
        self.gate.set()
        self.snapshot_entered = threading.Event()  # set when a VolumeSnapshot handler starts (for kill tests)
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, Any]] = []
        self.multicluster_calls = 0  # requests that came by a MultiCluster/ path
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._made_dirs: list[Path] = []

    # lifecycle ---------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        assert self._server is not None, "the fake StorPool API is not started"
        return self._server.server_address[1]

    def start(self) -> FakeStorPoolApi:
        (self.root / "volumes").mkdir(parents=True, exist_ok=True)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
        if self.devices:
            for d in (DEV_BY_NAME, DEV_BY_ID):
                if not d.exists():
                    d.mkdir()
                    self._made_dirs.append(d)
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-storpool-api",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; detach every loop device and remove every link the fake made, then its files."""
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for obj in [*self.volumes.values(), *self.snapshots.values()]:
                for client in list(obj.attached):
                    self.detach(obj, client, force=True)
            self.volumes.clear()
            self.snapshots.clear()
        for d in reversed(self._made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass  # someone else's links live there too
        self._made_dirs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeStorPoolApi:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def write_conf(self, path: Path, *, our_id: bool = False) -> Path:
        """A /etc/storpool.conf-style file pointing at this fake (0600: it holds the token)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"SP_API_HTTP_HOST={self.host}\nSP_API_HTTP_PORT={self.port}\nSP_AUTH_TOKEN={self.token}\n")
            if our_id:
                fh.write(f"SP_OURID={self.client_id}\n")
        return path

    # test helpers (not API) --------------------------------------------------------------------------
    def make_volume(self, name: str, size_bytes: int, *, mkfs: bool = False, tags: dict[str, str] | None = None
                    ) -> _Object:
        """Create a volume as an operator would (same rules as VolumeCreate; "" makes an unnamed one), attached
        read-write to this host's client, optionally with an ext4 on it."""
        with self._lock:
            vol = self.volume_create({"name": name, "size": size_bytes, "tags": tags or {}}, attach=False)
        if mkfs:
            self.mkfs(vol)
        with self._lock:
            self.attach(vol, self.client_id, "rw")
        return vol

    def device(self, name: str) -> Path:
        """The link a client host has for a volume: /dev/storpool/<name>, or /dev/storpool-byid/<globalId> for
        `~<globalId>`."""
        return DEV_BY_ID / name[1:] if name.startswith("~") else DEV_BY_NAME / name

    def count(self, endpoint: str) -> int:
        return sum(1 for _, e in self.calls if e == endpoint)

    def live_snapshots(self) -> dict[str, _Object]:
        return {ref: s for ref, s in self.snapshots.items() if not s.deleted}

    # endpoints -------------------------------------------------------------------------------------------
    def handle(self, method: str, endpoint: str, arg: str | None, body: Any) -> Any:
        if endpoint == "FakeCalls":  # the fake's own endpoint (not StorPool's): its request log, for benchmarks
            with self._lock:
                return [list(call) for call in self.calls]
        with self._lock:
            self.calls.append((method, endpoint))
            if method == "POST":
                self.bodies.append((endpoint, body))
        if self.latency_s:
            time.sleep(self.latency_s)
        failure = self.take_failure(endpoint)
        if failure is not None:
            raise failure
        if endpoint == "VolumeSnapshot":
            self.snapshot_entered.set()
            self.gate.wait()
        with self._lock:
            data = self._dispatch(method, endpoint, arg, body if isinstance(body, dict | list) else {})
        lost = self.answer_lost(endpoint)
        if lost is not None:
            raise lost
        return data

    def _dispatch(self, method: str, endpoint: str, arg: str | None, body: Any) -> Any:
        ok = {"ok": True, "generation": self.generation}
        if method == "GET":
            if endpoint == "VolumesList":
                return [self.summary(v) for v in self.volumes.values()]
            if endpoint == "Volume" and arg:
                return [self.summary(self.find(self.volumes, arg, "volume"))]
            if endpoint == "SnapshotsList":
                return [self.snap_summary(s) for s in self.snapshots.values()]
            if endpoint == "Snapshot" and arg:
                return [self.snap_summary(self.find(self.snapshots, arg, "snapshot", deleted_ok=True))]
            if endpoint == "VolumeListSnapshots" and arg:
                return self.chain(self.find(self.volumes, arg, "volume"))
            if endpoint == "AttachmentsList":
                return self.attachments()
        elif method == "POST":
            body = body if isinstance(body, dict) or endpoint == "VolumesReassign" else {}
            if endpoint == "VolumeCreate":
                vol = self.volume_create(body, attach=False)
                return {**ok, "name": vol.ref, "globalId": vol.global_id}
            if endpoint == "VolumeDelete" and arg:
                self.volume_delete(arg)
                return {**ok, "generation": self.generation}
            if endpoint == "VolumeSnapshot" and arg:
                vol = self.find(self.volumes, arg, "volume")
                snap = self.snapshot(vol, body.get("name") or None, self._tags(body.get("tags")))
                return {**ok, "snapshotGlobalId": snap.global_id, "snapshotVisibleVolumeId": snap.visible_id,
                        **({"autoName": snap.ref} if snap.auto_name else {})}
            if endpoint == "VolumesGroupSnapshot":
                return self.group_snapshot(body)
            if endpoint == "VolumesReassign":
                self.reassign(body)
                return {**ok, "generation": self.generation}
            if endpoint == "SnapshotDelete" and arg:
                self.snapshot_delete(arg)
                return {**ok, "generation": self.generation}
            if endpoint == "SnapshotUpdate" and arg:
                self.snapshot_update(self.find(self.snapshots, arg, "snapshot"), body)
                return {**ok, "generation": self.generation}
            if endpoint == "VolumeUpdate" and arg:
                self.volume_update(self.find(self.volumes, arg, "volume"), body)
                return {**ok, "generation": self.generation}
            if endpoint == "VolumeRevert" and arg:
                self.revert(self.find(self.volumes, arg, "volume"), body)
                return {**ok, "generation": self.generation}
        raise FakeApiError("fake-notImplemented", f"the fake StorPool API does not implement {method} {endpoint}",
                           404)


class _Handler(BaseHTTPRequestHandler):
    api: FakeStorPoolApi
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read `calls`
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        try:
            if self.headers.get("Authorization", "") != f"Storpool v1:{self.api.token}":
                raise FakeApiError("fake-auth", "missing or wrong authentication token", 401)
            path = self.path.split("?", 1)[0]
            if not path.startswith(PREFIX):
                raise FakeApiError("fake-notImplemented", f"unknown path {path}", 404)
            rest = path[len(PREFIX):]
            if rest.startswith("MultiCluster/"):  # spapi _format_path; CloudStack uses MultiCluster/ paths
                rest = rest.removeprefix("MultiCluster/")
                with self.api._lock:
                    self.api.multicluster_calls += 1
            endpoint, _, arg = rest.partition("/")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise FakeApiError("fake-tooLarge", "request too large")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                raise FakeApiError("fake-notJson", "the request body is not JSON") from None
            data = self.api.handle(method, endpoint, arg or None, body)
            self._reply(200, {"data": data})
        except FakeApiError as exc:
            self._reply(exc.status, {"error": {"name": exc.name, "descr": exc.descr, "transient": exc.transient}})
        except Exception as exc:  # a bug in the fake: answer like the API would, so the client does not hang
            self._reply(500, {"error": {"name": "fake-internal", "descr": f"fake: {exc}", "transient": False}})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client is gone (a test killed it mid-call); the operation itself was done


@contextmanager
def running(root: Path, **kwargs: Any) -> Iterator[FakeStorPoolApi]:
    fake = FakeStorPoolApi(root, **kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
