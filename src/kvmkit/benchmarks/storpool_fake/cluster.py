"""The FAKE StorPool cluster's state and rules — not StorPool. Every rule below names the public source it follows:
the `storpool` binding (`storpool.spapi`, `storpool.sptypes`, as installed from PyPI, 7.3.0), the CloudStack plugin
(apache/cloudstack plugins/storage/volume/storpool: `StorPoolUtil.java`, `StorPoolVMSnapshotStrategy.java`),
pve-storpool, or StorPool's documentation. Where no public source says what StorPool does, the fake says so: its
error names for those cases start with `fake-` so nothing can mistake them for StorPool's (the only error name a
public source confirms is `objectDoesNotExist`: CloudStack's `StorPoolUtil.objectExists` tests for it).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmkit.benchmarks.storpool_fake import devices

DEV_BY_NAME = Path("/dev/storpool")
DEV_BY_ID = Path("/dev/storpool-byid")
# sptypes.VOLUME_NAME_REGEX / SNAPSHOT_NAME_REGEX / VOLUME_TAG_*_REGEX and nameValidator's `len(name) >= size` with
# VOLUME_NAME_SIZE = 200; 'list' and 'status' are blacklisted names (sptypes VolumeName/SnapshotName)
NAME_RE = re.compile(r"^\#?[A-Za-z0-9_\-.:]+$")
SNAP_NAME_RE = re.compile(r"^\*?[A-Za-z0-9_\-.:@]+$")
TAG_NAME_RE = re.compile(r"^[A-Za-z0-9_\-.:]+$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_\-.:]*$")
NAME_SIZE = 200
BLACKLISTED = {"list", "status"}
# StorPool's documentation (volume tags): "The volume name including tags cannot exceed 200 bytes." The fake counts
# name + every tag key and value, in UTF-8 bytes (how StorPool counts is not published: a real cluster confirms it).
NAME_AND_TAGS_BYTES = 200
NOT_FOUND = "objectDoesNotExist"  # confirmed: CloudStack StorPoolUtil.objectExists


class FakeApiError(Exception):
    """An API error answer (spapi.ApiError reads `name`, `descr`, `transient` from `{"error": …}`)."""

    def __init__(self, name: str, descr: str, status: int = 400, transient: bool = False) -> None:
        super().__init__(f"{name}: {descr}")
        self.name, self.descr, self.status, self.transient = name, descr, status, transient


@dataclass
class _Object:
    """A volume or a snapshot of the fake cluster."""

    name: str  # "" for an unnamed volume (CloudStack: VolumeCreate with "name": "") or an anonymous snapshot
    global_id: str
    visible_id: int
    size: int
    path: Path  # its data: a file on the reflink pool
    parent: str = ""  # the snapshot it sits on (spapi snapshotCreate: "the snapshot becomes the parent of the volume")
    tags: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    on_volume: str = ""  # snapshots: the volume it was taken of
    loop: str | None = None  # /dev/loopN while attached to this host's client
    created_from: str = ""  # volumes made from a snapshot (VolumeCreate parent=…): that snapshot's ref
    attached: dict[int, str] = field(default_factory=dict)  # client id → "rw" / "ro" (sptypes AttachmentDesc)
    deleted: bool = False  # snapshots: SnapshotDelete accepted, data kept while volumes depend on it
    auto_name: bool = False

    @property
    def ref(self) -> str:
        """How the API addresses it: its name, or `~<globalId>` (sptypes VOLUME_NAME_OR_GLOBAL_ID_REGEX)."""
        return self.name or "~" + self.global_id

    def links(self) -> tuple[Path, ...]:
        """What a StorPool client host shows: /dev/storpool-byid/<globalId> always, /dev/storpool/<name> for a named
        object (CloudStack's StorPoolStorageAdaptor attaches unnamed volumes by /dev/storpool-byid/<globalId>)."""
        by_id = (DEV_BY_ID / self.global_id,)
        return (DEV_BY_NAME / self.name, *by_id) if self.name and not self.auto_name else by_id


def name_and_tags_bytes(name: str, tags: dict[str, str]) -> int:
    return len(name.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in tags.items())


class FakeCluster:
    """The state and the rules; FakeStorPoolApi (server.py) puts HTTP in front of it."""

    def __init__(self, root: Path, *, devices_on: bool, require_reflink: bool, cluster_id: str,
                 client_id: int) -> None:
        self.root = root
        self.devices = devices_on  # False: files only (offline tests without root/loop devices)
        self.require_reflink = require_reflink
        self.cluster_id = cluster_id  # globalIds are <cluster>.<sub>.<n> (sptypes GlobalVolumeId: three parts)
        self.client_id = client_id  # this host's client (SP_OURID): attachments to it are loop devices here
        self.volumes: dict[str, _Object] = {}  # by ref
        self.snapshots: dict[str, _Object] = {}
        self.generation = 1
        self.failures: dict[str, list[FakeApiError]] = {}  # endpoint → errors to answer next (test knob)
        self.lost_answers: dict[str, int] = {}  # endpoint → calls to carry out, then answer transiently (test knob)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # test knobs ------------------------------------------------------------------------------------------
    def fail_next(self, endpoint: str, times: int = 1, *, transient: bool = True) -> None:
        """Answer the next `times` calls of `endpoint` with an error. `transient: true` is how the API marks an
        error worth retrying (spapi.ApiError.transient; spapi.Api.__call__ retries those `transientRetries` times,
        sleeping `transientSleep(retry)`), e.g. during a management service failover."""
        err = FakeApiError("fake-transient" if transient else "fake-failure", f"{endpoint}: injected failure",
                           503 if transient else 500, transient)
        with self._lock:
            self.failures.setdefault(endpoint, []).extend([err] * times)

    def lose_answer(self, endpoint: str, times: int = 1) -> None:
        """Carry out the next `times` calls of `endpoint`, then answer them with a transient error, as a management
        failover between doing a call and answering it would: the binding retries a call that was done."""
        with self._lock:
            self.lost_answers[endpoint] = self.lost_answers.get(endpoint, 0) + times

    def answer_lost(self, endpoint: str) -> FakeApiError | None:
        with self._lock:
            if not self.lost_answers.get(endpoint):
                return None
            self.lost_answers[endpoint] -= 1
        return FakeApiError("fake-transient", f"{endpoint}: done, answer lost", 503, True)

    def take_failure(self, endpoint: str) -> FakeApiError | None:
        with self._lock:
            queue = self.failures.get(endpoint)
            return queue.pop(0) if queue else None

    # lookups ---------------------------------------------------------------------------------------------
    def _new_id(self) -> tuple[str, int]:
        n = next(self._ids)
        return f"{self.cluster_id}.{_base36(n)}", n

    def find(self, table: dict[str, _Object], ref: str, what: str, *, deleted_ok: bool = False) -> _Object:
        """By name or by `~<globalId>` (spapi: every volume/snapshot argument is VolumeNameOrGlobalId)."""
        obj = table.get(ref)
        if obj is None and ref.startswith("~"):
            obj = next((o for o in table.values() if o.global_id == ref[1:]), None)
        if obj is None or (obj.deleted and not deleted_ok):
            raise FakeApiError(NOT_FOUND, f"{what} {ref} does not exist", 404)
        return obj

    def _check_name(self, name: Any, regex: re.Pattern[str], what: str) -> str:
        if not isinstance(name, str) or not regex.match(name) or name in BLACKLISTED or len(name) >= NAME_SIZE:
            raise FakeApiError("fake-invalidName", f"invalid {what} name {name!r}")
        if name in self.volumes or name in self.snapshots:
            raise FakeApiError("fake-nameTaken", f"an object named {name} already exists")
        return name

    def _tags(self, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or len(raw) > 64:
            raise FakeApiError("fake-invalidTags", "tags must be a map of at most 64 entries")
        for k, v in raw.items():
            if not TAG_NAME_RE.match(str(k)) or not isinstance(v, str) or not TAG_VALUE_RE.match(v):
                raise FakeApiError("fake-invalidTags", f"invalid tag {k!r}={v!r}")
        return dict(raw)

    @staticmethod
    def _check_bytes(name: str, tags: dict[str, str]) -> None:
        used = name_and_tags_bytes(name, tags)
        if used > NAME_AND_TAGS_BYTES:
            raise FakeApiError("fake-nameTooLong", f"name and tags take {used} bytes; at most "
                                                   f"{NAME_AND_TAGS_BYTES} allowed")

    # volumes ---------------------------------------------------------------------------------------------
    def volume_create(self, body: dict, attach: bool = True) -> _Object:
        """`name` absent or "" makes an unnamed volume, addressed only as `~<globalId>` (CloudStack's
        StorPoolUtil.volumeCreate sends "name": ""; pve-storpool creates only unnamed volumes)."""
        name = body.get("name") or ""
        if name:
            self._check_name(name, NAME_RE, "volume")
        tags = self._tags(body.get("tags"))
        self._check_bytes(name, tags)
        gid, n = self._new_id()
        path = self.root / "volumes" / f"{gid}.raw"
        parent_name = created_from = ""
        if body.get("parent"):
            parent = self.find(self.snapshots, str(body["parent"]), "snapshot")
            devices.clone(parent.path, path, self.require_reflink)
            size = int(body.get("size") or parent.size)
            parent_name = created_from = parent.ref
        elif body.get("baseOn"):
            base = self.find(self.volumes, str(body["baseOn"]), "volume")
            devices.clone(base.path, path, self.require_reflink)
            size = int(body.get("size") or base.size)
        else:
            size = body.get("size")
            if not isinstance(size, int) or size <= 0 or size % 512:
                raise FakeApiError("fake-invalidSize", "size must be a positive multiple of 512")
            with path.open("wb") as fh:
                fh.truncate(size)
        os.truncate(path, size)
        vol = _Object(name, gid, n, size, path, parent=parent_name, tags=tags, created_from=created_from)
        self.volumes[vol.ref] = vol
        self.generation += 1
        if attach:
            self.attach(vol, self.client_id, "rw")
        return vol

    def volume_delete(self, ref: str) -> None:
        """Refused while attached anywhere: sptypes OnAttached, "fail" if not specified."""
        vol = self.find(self.volumes, ref, "volume")
        if vol.attached:
            raise FakeApiError("fake-attached", f"volume {vol.ref} is attached to client(s) {sorted(vol.attached)}")
        vol.path.unlink(missing_ok=True)
        del self.volumes[vol.ref]
        self.generation += 1
        if vol.created_from:
            self._collect(vol.created_from)

    def volume_update(self, vol: _Object, body: dict) -> None:
        """size / shrinkOk (sptypes VolumeUpdateDesc); a smaller size without shrinkOk is refused (the flag's name)."""
        if "tags" in body:
            merged = {**vol.tags, **self._tags(body["tags"])}
            tags = {k: v for k, v in merged.items() if v != ""}  # the fake's choice: an empty value removes a tag
            self._check_bytes(vol.name, tags)
            vol.tags = tags
        if body.get("size") is not None:
            size = int(body["size"])
            if size < vol.size and not body.get("shrinkOk"):
                raise FakeApiError("fake-shrinkRefused", f"volume {vol.ref} would shrink; shrinkOk not given")
            os.truncate(vol.path, size)
            vol.size = size
            if vol.loop:
                devices.refresh_size(vol.loop)
        self.generation += 1

    def revert(self, vol: _Object, body: dict) -> None:
        """Refused while the volume is attached to any client: StorPool's integrations detach it from all of
        them first (CloudStack StorPoolVMSnapshotStrategy.revertVMSnapshot and the data store driver's revert call
        StorPoolUtil.detachAllForced before volumeRevert; pve-storpool detaches `all` and stops if that fails).
        The volume keeps its current size (sptypes VolumeRevertDesc has only `toSnapshot`)."""
        snap = self.find(self.snapshots, str(body.get("toSnapshot", "")), "snapshot")
        if snap.on_volume not in (vol.ref, vol.name) and not self._is_ancestor(snap.ref, vol):
            raise FakeApiError("fake-notAncestor", f"snapshot {snap.ref} is not a snapshot of {vol.ref}")
        if vol.attached:
            raise FakeApiError("fake-attached", f"volume {vol.ref} is attached to client(s) {sorted(vol.attached)}")
        devices.clone(snap.path, vol.path, self.require_reflink, in_place=True)
        os.truncate(vol.path, vol.size)
        vol.parent = snap.ref
        self.generation += 1

    def _is_ancestor(self, ref: str, vol: _Object) -> bool:
        cur, seen = vol.parent, 0
        while cur and seen < 10_000:
            if cur == ref:
                return True
            cur = self.snapshots[cur].parent if cur in self.snapshots else ""
            seen += 1
        return False

    # snapshots -------------------------------------------------------------------------------------------
    def snapshot(self, vol: _Object, name: str | None, tags: dict[str, str]) -> _Object:
        """No name (or "", as CloudStack's StorPoolUtil.volumeSnapshot sends) makes an anonymous snapshot, addressed
        by its `~<snapshotGlobalId>` (StorPoolUtil.getSnapshotNameFromResponse; sptypes SnapshotSummary.autoName)."""
        if name:
            self._check_name(name, SNAP_NAME_RE, "snapshot")
        self._check_bytes(name or "", tags)
        gid, n = self._new_id()
        path = self.root / "snapshots" / f"{gid}.raw"
        devices.clone(vol.path, path, self.require_reflink)
        snap = _Object(name or f"*{n}", gid, n, vol.size, path, parent=vol.parent, tags=tags, on_volume=vol.ref,
                       auto_name=not name)
        self.snapshots[snap.ref] = snap
        vol.parent = snap.ref
        self.generation += 1
        return snap

    def group_snapshot(self, body: dict) -> dict:
        """All or none (checks first). The group's `tags` go on every snapshot, a volume's own on top: CloudStack's
        StorPoolUtil.volumesGroupSnapshot puts its tags only at group level and relies on them per snapshot."""
        specs = body.get("volumes")
        if not isinstance(specs, list) or not specs:
            raise FakeApiError("fake-invalidGroup", "volumes must be a non-empty list")
        common = self._tags(body.get("tags"))
        vols = [self.find(self.volumes, str(s.get("volume", "")), "volume") for s in specs]
        names = [s.get("name") or "" for s in specs]
        tags = [{**common, **self._tags(s.get("tags"))} for s in specs]
        for name, tag in zip(names, tags, strict=True):
            if name:
                self._check_name(name, SNAP_NAME_RE, "snapshot")
            self._check_bytes(name, tag)
        if len({n for n in names if n}) != len([n for n in names if n]):
            raise FakeApiError("fake-invalidGroup", "duplicate snapshot names in the group")
        made = []
        for vol, name, tag in zip(vols, names, tags, strict=True):
            snap = self.snapshot(vol, name or None, tag)
            made.append({"volume": vol.ref, "volumeGlobalId": vol.global_id, "snapshot": snap.ref,
                         "remoteId": snap.global_id, "snapshotGlobalId": snap.global_id})
        return {"snapshots": made}

    def snapshot_delete(self, ref: str) -> None:
        """Refused while attached (CloudStack's StorPoolUtil.snapshotDelete detaches all first). A snapshot other
        volumes were created from can be deleted: it is listed with `deleted: true` (sptypes SnapshotSummary.deleted:
        "currently being deleted") until its last such volume goes (SnapshotSummary.bound: "garbage-collected as
        soon as they remain childless")."""
        snap = self.find(self.snapshots, ref, "snapshot")
        if snap.attached:
            raise FakeApiError("fake-attached", f"snapshot {snap.ref} is attached to client(s) "
                                                f"{sorted(snap.attached)}")
        snap.deleted = True
        self.generation += 1
        self._collect(snap.ref)

    def _collect(self, ref: str) -> None:
        """Drop a deleted snapshot once no volume was created from it; its children move to its parent."""
        snap = self.snapshots.get(ref)
        if snap is None or not snap.deleted or any(v.created_from == ref for v in self.volumes.values()):
            return
        for obj in [*self.volumes.values(), *self.snapshots.values()]:
            if obj.parent == ref:
                obj.parent = snap.parent
        snap.path.unlink(missing_ok=True)
        del self.snapshots[ref]

    def snapshot_update(self, snap: _Object, body: dict) -> None:
        if "tags" in body:
            merged = {**snap.tags, **self._tags(body["tags"])}
            tags = {k: v for k, v in merged.items() if v != ""}  # the fake's choice: an empty value removes a tag
            self._check_bytes("" if snap.auto_name else snap.name, tags)
            snap.tags = tags
        self.generation += 1

    # attachments -----------------------------------------------------------------------------------------
    def attach(self, obj: _Object, client: int, rights: str) -> None:
        obj.attached[client] = rights
        if client == self.client_id and self.devices and not obj.loop:
            obj.loop = devices.expose(obj.path, obj.links(), read_only=rights == "ro")

    def detach(self, obj: _Object, client: int, force: bool) -> None:
        """Detaching a volume a process holds open needs `force` (sptypes VolumeReassignDesc.force: "Whether to force
        detaching of open volumes")."""
        if client == self.client_id and obj.loop:
            if devices.is_open(obj.loop) and not force:
                raise FakeApiError("fake-open", f"{obj.ref} is open on client {client}; not detached without force")
            devices.unexpose(obj.loop, obj.links())
            obj.loop = None
        obj.attached.pop(client, None)

    def reassign(self, body: Any) -> None:
        """VolumesReassign: `detach` a client list or "all" (sptypes DetachClientsList), `ro`, `rw`; snapshots only
        read-only (sptypes SnapshotReassignDesc has no `rw`). Checked for every item before any is applied."""
        if not isinstance(body, list) or len(body) > 1024:
            raise FakeApiError("fake-invalidReassign", "VolumesReassign takes a list")
        plan = []
        for item in body:
            if not isinstance(item, dict):
                raise FakeApiError("fake-invalidReassign", "each item is an object")
            is_snap = "snapshot" in item
            obj = (self.find(self.snapshots, str(item["snapshot"]), "snapshot") if is_snap
                   else self.find(self.volumes, str(item.get("volume", "")), "volume"))
            if is_snap and item.get("rw"):
                raise FakeApiError("fake-invalidReassign", "snapshots attach read-only")
            detach = item.get("detach") or []
            clients = sorted(obj.attached) if detach == "all" else [int(c) for c in detach]
            force = bool(item.get("force"))
            for c in clients:
                if c == self.client_id and obj.loop and devices.is_open(obj.loop) and not force:
                    raise FakeApiError("fake-open", f"{obj.ref} is open on client {c}; not detached without force")
            plan.append((obj, clients, force, [int(c) for c in item.get("ro") or []],
                         [int(c) for c in item.get("rw") or []]))
        for obj, clients, force, ro, rw in plan:
            for c in clients:
                self.detach(obj, c, force)
            for c in ro:
                self.attach(obj, c, "ro")
            for c in rw:
                self.attach(obj, c, "rw")
        self.generation += 1

    def attachments(self) -> list[dict]:
        """AttachmentsList rows (sptypes AttachmentDesc)."""
        return [{"volume": obj.ref, "snapshot": is_snap, "client": client, "rights": rights, "pos": 0,
                 "globalId": obj.global_id}
                for table, is_snap in ((self.volumes, False), (self.snapshots, True))
                for obj in table.values() for client, rights in sorted(obj.attached.items())]

    # summaries in the shapes the binding validates -------------------------------------------------------
    def summary(self, obj: _Object) -> dict:
        return {"name": obj.ref, "globalId": obj.global_id, "visibleVolumeId": obj.visible_id, "size": obj.size,
                "parentName": obj.parent, "templateName": "", "replication": 3, "placeAll": "fake",
                "placeTail": "fake", "placeHead": "fake", "bw": "-", "iops": "-", "objectsCount": 1,
                "creationTimestamp": obj.created, "tags": obj.tags}

    def snap_summary(self, snap: _Object) -> dict:
        return {**self.summary(snap), "onVolume": snap.on_volume, "autoName": snap.auto_name, "bound": False,
                "deleted": snap.deleted, "transient": False, "recoveringFromRemote": False}

    def chain(self, vol: _Object) -> list[dict]:
        out, cur = [], vol.parent
        while cur and cur in self.snapshots and len(out) < 10_000:
            out.append(self.snap_summary(self.snapshots[cur]))
            cur = self.snapshots[cur].parent
        return out

    def mkfs(self, vol: _Object) -> None:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                        "-L", (vol.name or vol.global_id)[:16], str(vol.path)], check=True, capture_output=True)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
