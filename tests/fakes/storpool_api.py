"""A FAKE StorPool API — not StorPool. A StorPool cluster cannot run on these machines; this stands in for its
management API so kvmkit's StorPool driver can be exercised through StorPool's own Python binding
(`storpool.spapi.Api`) against real HTTP, real JSON, and real block devices.

What is real here: an HTTP server on 127.0.0.1 answering `/ctrl/1.0/<Endpoint>` with `{"data": …}` or
`{"error": {"name", "descr", "transient"}}` in the shapes the binding parses (VolumeSummary, SnapshotSummary,
ApiOkSnapshotCreate, GroupSnapshotsResult); volumes, snapshots and tags in memory; the Authorization header checked.
Each volume is a file on the lab's XFS reflink pool exposed as a loop device (direct I/O) with the links a StorPool
client host has, `/dev/storpool/<name>` and `/dev/storpool-byid/<globalId>`, so a lab VM can run on it. A snapshot
is a reflink (FICLONE) of the volume's file; VolumeRevert clones the snapshot's file back into the volume's file in
place (same inode, so the loop device and its links stay) — so guest data really goes back.

What is the fake's own choice (StorPool does not publish these; the binding names only `objectDoesNotExist`):
error names `objectExists` (name taken), `objectDoesNotExist`, `objectInUse` (a volume open by a process: a running
VM), `objectHasChildren` (a snapshot a volume was created from), `invalidParam`, `authFailed`. In real StorPool a
snapshot and a revert are metadata operations; here they cost one FICLONE (O(extents)). Nothing of the cluster's
placement, replication or multi-cluster behaviour is modelled.

VolumesReassign attaches a snapshot read-only (a read-only loop device behind the same two links) and detaches
volumes and snapshots, for this one client host; the client ids are not checked.

Test knobs: `latency_s` (an API round trip, slept in the handler), `gate` (clear it to hold every VolumeSnapshot
handler until it is set again, so a test can kill a client mid-snapshot), `calls` (every request, in order).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fakes import storpool_devices as devices

PREFIX = "/ctrl/1.0/"
DEV_BY_NAME = Path("/dev/storpool")
DEV_BY_ID = Path("/dev/storpool-byid")
NAME_RE = re.compile(r"^[A-Za-z0-9_\-.:]{1,199}$")
SNAP_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.:@]{1,199}$")
TAG_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.:]{1,199}$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_\-.:]{0,199}$")
MAX_BODY = 1 << 20


class FakeApiError(Exception):
    def __init__(self, name: str, descr: str, status: int = 400) -> None:
        super().__init__(f"{name}: {descr}")
        self.name, self.descr, self.status = name, descr, status


@dataclass
class _Object:
    """A volume or a snapshot of the fake cluster."""

    name: str
    global_id: str
    visible_id: int
    size: int
    path: Path  # its data: a file on the reflink pool
    parent: str = ""  # the snapshot it sits on (StorPool: a snapshot becomes its volume's parent)
    tags: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    on_volume: str = ""  # snapshots: the volume it was taken of
    loop: str | None = None  # /dev/loopN while attached (volumes from creation; snapshots read-only on request)
    created_from: str = ""  # volumes made from a snapshot (VolumeCreate parent=…): that snapshot is their parent


class FakeStorPoolApi:
    """A FAKE StorPool API on 127.0.0.1 (see the module docstring for what it does and does not model)."""

    def __init__(self, root: Path, *, token: str = "fake-storpool-token-0123456789", devices: bool = True,
                 require_reflink: bool = True, latency_s: float = 0.0, cluster_id: str = "fake.t") -> None:
        self.root = root
        self.token = token
        self.devices = devices  # False: files only (offline tests without root/loop devices)
        self.require_reflink = require_reflink  # False: fall back to a plain copy where FICLONE is unsupported
        self.latency_s = latency_s
        self.cluster_id = cluster_id
        self.gate = threading.Event()
        self.gate.set()
        self.snapshot_entered = threading.Event()  # set when a VolumeSnapshot handler starts (for kill tests)
        self.calls: list[tuple[str, str]] = []
        self.volumes: dict[str, _Object] = {}
        self.snapshots: dict[str, _Object] = {}
        self.generation = 1
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
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
            for vol in list(self.volumes.values()):
                self._unexpose(vol)
            for snap in list(self.snapshots.values()):
                self._unexpose(snap)
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

    def write_conf(self, path: Path) -> Path:
        """A /etc/storpool.conf-style file pointing at this fake (0600: it holds the token)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"SP_API_HTTP_HOST={self.host}\nSP_API_HTTP_PORT={self.port}\nSP_AUTH_TOKEN={self.token}\n")
        return path

    # test helpers (not API) --------------------------------------------------------------------------
    def make_volume(self, name: str, size_bytes: int, *, mkfs: bool = False, tags: dict[str, str] | None = None
                    ) -> _Object:
        """Create a volume as an operator would (same checks as VolumeCreate), optionally with an ext4 on it."""
        with self._lock:
            vol = self._volume_create({"name": name, "size": size_bytes, "tags": tags or {}}, expose=False)
        if mkfs:
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                            "-L", name[:16], str(vol.path)], check=True, capture_output=True)
        with self._lock:
            self._expose(vol)
        return vol

    def device(self, name: str) -> Path:
        return DEV_BY_NAME / name

    def count(self, endpoint: str) -> int:
        return sum(1 for _, e in self.calls if e == endpoint)

    # the model ---------------------------------------------------------------------------------------
    def _new_id(self) -> tuple[str, int]:
        n = next(self._ids)
        return f"{self.cluster_id}.{_base36(n)}", n

    def _find(self, table: dict[str, _Object], ref: str, what: str) -> _Object:
        if ref.startswith("~"):
            for obj in table.values():
                if obj.global_id == ref[1:]:
                    return obj
        elif ref in table:
            return table[ref]
        raise FakeApiError("objectDoesNotExist", f"{what} {ref} does not exist", 404)

    def _check_name(self, name: Any, regex: re.Pattern[str], what: str) -> str:
        if not isinstance(name, str) or not regex.match(name):
            raise FakeApiError("invalidParam", f"invalid {what} name {name!r}")
        if name in self.volumes or name in self.snapshots:
            raise FakeApiError("objectExists", f"an object named {name} already exists")
        return name

    def _tags(self, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or len(raw) > 64:
            raise FakeApiError("invalidParam", "tags must be a map of at most 64 entries")
        for k, v in raw.items():
            if not TAG_NAME_RE.match(str(k)) or not isinstance(v, str) or not TAG_VALUE_RE.match(v):
                raise FakeApiError("invalidParam", f"invalid tag {k!r}={v!r}")
        return dict(raw)

    def _volume_create(self, body: dict, expose: bool = True) -> _Object:
        name = self._check_name(body.get("name"), NAME_RE, "volume")
        gid, n = self._new_id()
        path = self.root / "volumes" / f"{gid}.raw"
        parent_name = ""
        created_from = ""
        if body.get("parent"):
            parent = self._find(self.snapshots, body["parent"], "snapshot")
            devices.clone(parent.path, path, self.require_reflink)
            size = int(body.get("size") or parent.size)
            parent_name = created_from = parent.name
        elif body.get("baseOn"):
            base = self._find(self.volumes, body["baseOn"], "volume")
            devices.clone(base.path, path, self.require_reflink)
            size = int(body.get("size") or base.size)
        else:
            size = body.get("size")
            if not isinstance(size, int) or size <= 0 or size % 512:
                raise FakeApiError("invalidParam", "size must be a positive multiple of 512")
            with path.open("wb") as fh:
                fh.truncate(size)
        os.truncate(path, size)
        vol = _Object(name, gid, n, size, path, parent=parent_name, tags=self._tags(body.get("tags")),
                      created_from=created_from)
        self.volumes[name] = vol
        self.generation += 1
        if expose:
            self._expose(vol)
        return vol

    def _expose(self, obj: _Object, read_only: bool = False) -> None:
        if self.devices:
            obj.loop = devices.expose(obj.path, (DEV_BY_NAME / obj.name, DEV_BY_ID / obj.global_id), read_only)

    def _unexpose(self, obj: _Object) -> None:
        if obj.loop:
            devices.unexpose(obj.loop, (DEV_BY_NAME / obj.name, DEV_BY_ID / obj.global_id))
            obj.loop = None

    def _in_use(self, obj: _Object) -> bool:
        return bool(obj.loop) and devices.is_open(obj.loop)

    def _snapshot(self, vol: _Object, name: str | None, tags: dict[str, str]) -> _Object:
        if name:
            self._check_name(name, SNAP_NAME_RE, "snapshot")
        gid, n = self._new_id()
        name = name or f"*{vol.name}@{n}"  # an anonymous snapshot gets an autoName
        path = self.root / "snapshots" / f"{gid}.raw"
        devices.clone(vol.path, path, self.require_reflink)
        snap = _Object(name, gid, n, vol.size, path, parent=vol.parent, tags=tags, on_volume=vol.name)
        self.snapshots[name] = snap
        vol.parent = name
        self.generation += 1
        return snap

    def _children(self, snap: _Object) -> list[str]:
        return [v.name for v in self.volumes.values() if v.created_from == snap.name]

    # summaries in the shapes the binding validates -------------------------------------------------------
    def _summary(self, obj: _Object) -> dict:
        return {"name": obj.name, "globalId": obj.global_id, "visibleVolumeId": obj.visible_id, "size": obj.size,
                "parentName": obj.parent, "templateName": "", "replication": 3, "placeAll": "fake",
                "placeTail": "fake", "placeHead": "fake", "bw": "-", "iops": "-", "objectsCount": 1,
                "creationTimestamp": obj.created, "tags": obj.tags}

    def _snap_summary(self, snap: _Object) -> dict:
        return {**self._summary(snap), "onVolume": snap.on_volume, "autoName": snap.name.startswith("*"),
                "bound": False, "deleted": False, "transient": False, "recoveringFromRemote": False}

    # endpoints -------------------------------------------------------------------------------------------
    def handle(self, method: str, endpoint: str, arg: str | None, body: Any) -> Any:
        if endpoint == "FakeCalls":  # the fake's own endpoint (not StorPool's): its request log, for benchmarks
            with self._lock:
                return [list(call) for call in self.calls]
        with self._lock:
            self.calls.append((method, endpoint))
        if self.latency_s:
            time.sleep(self.latency_s)
        if endpoint == "VolumeSnapshot":
            self.snapshot_entered.set()
            self.gate.wait()
        with self._lock:
            return self._dispatch(method, endpoint, arg, body if isinstance(body, dict | list) else {})

    def _dispatch(self, method: str, endpoint: str, arg: str | None, body: Any) -> Any:
        ok = {"ok": True, "generation": self.generation}
        if method == "GET":
            if endpoint == "VolumesList":
                return [self._summary(v) for v in self.volumes.values()]
            if endpoint == "Volume" and arg:
                return [self._summary(self._find(self.volumes, arg, "volume"))]
            if endpoint == "SnapshotsList":
                return [self._snap_summary(s) for s in self.snapshots.values()]
            if endpoint == "Snapshot" and arg:
                return [self._snap_summary(self._find(self.snapshots, arg, "snapshot"))]
            if endpoint == "VolumeListSnapshots" and arg:
                vol = self._find(self.volumes, arg, "volume")
                chain, cur = [], vol.parent
                while cur and cur in self.snapshots:
                    chain.append(self._snap_summary(self.snapshots[cur]))
                    cur = self.snapshots[cur].parent
                return chain
        elif method == "POST":
            if endpoint == "VolumeCreate":
                vol = self._volume_create(body)
                return {**ok, "name": vol.name, "globalId": vol.global_id}
            if endpoint == "VolumeDelete" and arg:
                vol = self._find(self.volumes, arg, "volume")
                if self._in_use(vol):
                    raise FakeApiError("objectInUse", f"volume {vol.name} is open on a client")
                self._unexpose(vol)
                vol.path.unlink(missing_ok=True)
                del self.volumes[vol.name]
                self.generation += 1
                return ok
            if endpoint == "VolumeSnapshot" and arg:
                vol = self._find(self.volumes, arg, "volume")
                snap = self._snapshot(vol, body.get("name"), self._tags(body.get("tags")))
                return {**ok, "snapshotGlobalId": snap.global_id, "snapshotVisibleVolumeId": snap.visible_id,
                        **({"autoName": snap.name} if snap.name.startswith("*") else {})}
            if endpoint == "VolumesGroupSnapshot":
                return self._group_snapshot(body)
            if endpoint == "VolumesReassign":
                return self._reassign(body)
            if endpoint == "SnapshotDelete" and arg:
                snap = self._find(self.snapshots, arg, "snapshot")
                if self._in_use(snap):
                    raise FakeApiError("objectInUse", f"snapshot {snap.name} is open on a client")
                self._unexpose(snap)
                children = self._children(snap)
                if children:
                    raise FakeApiError("objectHasChildren", f"snapshot {snap.name} has children: "
                                                            f"{', '.join(children)}")
                for obj in [*self.volumes.values(), *self.snapshots.values()]:
                    if obj.parent == snap.name:  # rebase its children onto its own parent (data stays theirs)
                        obj.parent = snap.parent
                snap.path.unlink(missing_ok=True)
                del self.snapshots[snap.name]
                self.generation += 1
                return ok
            if endpoint in ("SnapshotUpdate", "VolumeUpdate") and arg:
                table = self.snapshots if endpoint == "SnapshotUpdate" else self.volumes
                obj = self._find(table, arg, "snapshot" if table is self.snapshots else "volume")
                if "tags" in body:
                    merged = {**obj.tags, **self._tags(body["tags"])}
                    obj.tags = {k: v for k, v in merged.items() if v != ""}  # an empty value removes a tag
                self.generation += 1
                return ok
            if endpoint == "VolumeRevert" and arg:
                vol = self._find(self.volumes, arg, "volume")
                snap = self._find(self.snapshots, str(body.get("toSnapshot", "")), "snapshot")
                if snap.on_volume != vol.name and not self._is_ancestor(snap.name, vol):
                    raise FakeApiError("invalidParam", f"snapshot {snap.name} is not a snapshot of {vol.name}")
                if self._in_use(vol):
                    raise FakeApiError("objectInUse", f"volume {vol.name} is open on a client; stop it first")
                devices.clone(snap.path, vol.path, self.require_reflink, in_place=True)
                if vol.loop:
                    devices.flush_block_cache(vol.loop)
                vol.parent = snap.name
                self.generation += 1
                return ok
        raise FakeApiError("invalidParam", f"the fake StorPool API does not implement {method} {endpoint}", 404)

    def _is_ancestor(self, name: str, vol: _Object) -> bool:
        cur = vol.parent
        while cur:
            if cur == name:
                return True
            cur = self.snapshots[cur].parent if cur in self.snapshots else ""
        return False

    def _reassign(self, body: Any) -> dict:
        """Attach snapshots read-only / detach volumes and snapshots on this one client host."""
        if not isinstance(body, list):
            raise FakeApiError("invalidParam", "VolumesReassign takes a list")
        for item in body:
            if "snapshot" in item:
                obj = self._find(self.snapshots, str(item["snapshot"]), "snapshot")
            else:
                obj = self._find(self.volumes, str(item.get("volume", "")), "volume")
            if item.get("detach"):
                if self._in_use(obj) and not item.get("force"):
                    raise FakeApiError("objectInUse", f"{obj.name} is open on a client")
                self._unexpose(obj)
            elif item.get("ro") and not obj.loop:
                self._expose(obj, read_only=True)
            elif item.get("rw") and not obj.loop:
                if "snapshot" in item:
                    raise FakeApiError("invalidParam", "snapshots attach read-only")
                self._expose(obj)
        self.generation += 1
        return {"ok": True, "generation": self.generation}

    def _group_snapshot(self, body: dict) -> dict:
        """Every snapshot of the group or none: checks first, then the clones (all under the fake's one lock)."""
        specs = body.get("volumes")
        if not isinstance(specs, list) or not specs:
            raise FakeApiError("invalidParam", "volumes must be a non-empty list")
        common = self._tags(body.get("tags"))
        vols = [self._find(self.volumes, str(s.get("volume", "")), "volume") for s in specs]
        names = [s.get("name") for s in specs]
        for name in names:
            if name:
                self._check_name(name, SNAP_NAME_RE, "snapshot")
        if len({n for n in names if n}) != len([n for n in names if n]):
            raise FakeApiError("invalidParam", "duplicate snapshot names in the group")
        made = []
        for vol, spec in zip(vols, specs, strict=True):
            snap = self._snapshot(vol, spec.get("name"), {**common, **self._tags(spec.get("tags"))})
            made.append({"volume": vol.name, "volumeGlobalId": vol.global_id, "snapshot": snap.name,
                         "remoteId": snap.global_id, "snapshotGlobalId": snap.global_id})
        return {"snapshots": made}


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
                raise FakeApiError("authFailed", "missing or wrong authentication token", 401)
            path = self.path.split("?", 1)[0]
            if not path.startswith(PREFIX):
                raise FakeApiError("invalidParam", f"unknown path {path}", 404)
            endpoint, _, arg = path[len(PREFIX):].partition("/")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise FakeApiError("invalidParam", "request too large")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                raise FakeApiError("invalidParam", "the request body is not JSON") from None
            data = self.api.handle(method, endpoint, arg or None, body)
            self._reply(200, {"data": data})
        except FakeApiError as exc:
            self._reply(exc.status, {"error": {"name": exc.name, "descr": exc.descr, "transient": False}})
        except Exception as exc:  # a bug in the fake: answer like the API would, so the client does not hang
            self._reply(500, {"error": {"name": "internalError", "descr": f"fake: {exc}", "transient": False}})

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


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def main(argv: list[str] | None = None) -> None:
    """Serve the fake in its own process (benchmarks: client and server must not share one GIL). Writes
    {"host", "port", "token"} to --ready (0600) once listening; SIGTERM stops it and removes what it made."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="a FAKE StorPool API for kvmkit's tests and benchmarks")
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


@contextmanager
def running(root: Path, **kwargs: Any) -> Iterator[FakeStorPoolApi]:
    fake = FakeStorPoolApi(root, **kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
