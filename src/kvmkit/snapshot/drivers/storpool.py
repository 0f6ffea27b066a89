"""StorPool driver, on StorPool's own API binding (`pip install storpool`: `storpool.spapi.Api`), no CLI.

* A disk is StorPool's when libvirt names a StorPool client's device for it, as a block or a file disk:
  /dev/storpool/<name>, /dev/storpool-byid/<globalId> (how CloudStack attaches its unnamed volumes) or a /dev/sp-N
  node those links lead to. `plan` looks the volume up through the API (by name, or by `~globalId`) and checks that
  the disk's link resolves to the same device as the volume's own links, so a stale or hand-made link is refused.
* snapshot = one `VolumeSnapshot` call per volume (addressed by `~globalId`), issued concurrently by the engine
  inside the freeze, its transient retries bounded so the freeze deadline holds (storpool_api.py).
* group snapshot = one `VolumesGroupSnapshot` call across every disk of the VM; every snapshot in it carries the
  full ownership tags itself (kvmkit does not rely on the server copying group-level tags).
* revert = the API's `VolumeRevert`. StorPool's integrations detach a volume from every client first (CloudStack's
  StorPoolUtil.detachAllForced before volumeRevert; pve-storpool detaches `all`), so kvmkit records where the
  volume is attached (AttachmentsList), detaches it (without force: a volume something still holds open is
  refused, never yanked), reverts, restores the snapshot's size if the volume grew since (VolumeUpdate size +
  shrinkOk: the binding's VolumeRevertDesc carries only `toSnapshot`), and re-attaches it as it was. A failed
  revert still re-attaches. `stage_revert` takes a safety snapshot first; `undo` reverts to it, `commit` deletes it:
  a multi-disk revert is all-or-nothing.
* delete = by `~globalId`, after checking the snapshot under the recorded name is the one kvmkit made (its recorded
  globalId, its `kvmkit-vol` tag), and after detaching it from every client (an interrupted backup read may have
  left it attached; CloudStack's StorPoolUtil.snapshotDelete detaches first too). A snapshot StorPool keeps because
  volumes depend on it is listed `deleted: true`: kvmkit treats it as gone.
* Naming and tags: storpool_names.py (the binding's name rules, the 200-byte name + tags budget, checked at plan).
  `owned` lists every kvmkit-named snapshot of the volume, whichever catalog made it; the `Ownership` capability
  (`owner_of` / `set_owner` / `tag_of`, on the `kvmkit` tag) lets `recover` delete only this catalog's and report
  the rest (snapshot/ownership.py). `delete` refuses any snapshot kvmkit did not name.
* Declared capabilities (Protocols of drivers/base.py): GroupSnapshots, InUse (a snapshot a volume was created
  from), Ownership. Not Flattenable: a StorPool revert leaves no clone behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from kvmkit.config import Settings
from kvmkit.errors import Conflict, EnvironmentProblem, KvmkitError, NotFound, OperationFailed
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.reading import FileReader
from kvmkit.snapshot.drivers.storpool_api import ApiEdge, Endpoint, load_endpoint, spapi
from kvmkit.snapshot.drivers.storpool_names import (
    PREFIX,
    ROLE_PREREVERT,
    ROLE_SNAPSHOT,
    TAG_OWNER,
    TAG_ROLE,
    TAG_SNAP,
    TAG_VM,
    TAG_VOLUME,
    fit,
    full_tags,
    kvmkit_named,
    snapshot_name,
)
from kvmkit.snapshot.drivers.storpool_volumes import DEV_BY_NAME, Volume, is_storpool_path, lookup
from kvmkit.snapshot.journal import Staging
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk

__all__ = ["PREFIX", "ROLE_PREREVERT", "ROLE_SNAPSHOT", "TAG_OWNER", "TAG_ROLE", "TAG_SNAP", "TAG_VM", "TAG_VOLUME",
           "Endpoint", "StorPoolDriver", "load_endpoint", "spapi"]

log = logging.getLogger(__name__)

class StorPoolStaging(Staging):
    """A revert by the API's VolumeRevert: the volume, the snapshot to revert to, the safety snapshot that makes it
    undoable until every disk of the VM is reverted, and the clients the volume was attached to (re-attached after)."""

    kind: Literal["storpool"] = "storpool"
    volume: str
    volume_id: str
    to: str
    safety: str
    rw: list[int] = Field(default_factory=list)
    ro: list[int] = Field(default_factory=list)


def configured_drivers(settings: Settings | None = None) -> list[StorPoolDriver]:
    """The registry's hook: a StorPool driver when StorPool is configured here, else none."""
    from kvmkit import config

    settings = settings or config.load()
    endpoint = load_endpoint(settings.storpool)
    if endpoint is None:
        return []
    return [StorPoolDriver(endpoint)]


class StorPoolDriver:
    name = "storpool"

    def __init__(self, endpoint: Endpoint, api: Any = None) -> None:
        self._edge = ApiEdge(endpoint, api)
        self._volumes: dict[str, Volume] = {}  # disk source → volume, from plan until release (one create)

    @property
    def endpoint(self) -> Endpoint:
        return self._edge.endpoint

    @endpoint.setter
    def endpoint(self, value: Endpoint) -> None:
        self._edge.endpoint = value

    @property
    def _api(self) -> Any:
        return self._edge.api

    def _call(self, what: str, method: str, *args: Any, in_freeze: bool = False, **kwargs: Any) -> Any:
        return self._edge.call(what, method, *args, in_freeze=in_freeze, **kwargs)

    # volumes -------------------------------------------------------------------------------------------
    def claims(self, disk: Disk) -> bool:
        if disk.kind not in ("block", "file") or not disk.source:
            return False
        return is_storpool_path(disk.source) or os.path.realpath(disk.source).startswith("/dev/sp-")

    def volume(self, disk: Disk) -> Volume:
        """The volume behind a disk, from the API; the disk's link must resolve to the volume's device."""
        if disk.source in self._volumes:
            return self._volumes[disk.source]
        return lookup(self._call, disk)

    def release(self) -> None:
        self._volumes.clear()

    # create ---------------------------------------------------------------------------------------------
    def plan(self, disk: Disk, tag: str, options: PlanOptions | None = None) -> DiskSnapshot:
        """Everything StorPool could refuse is checked here, before any freeze: the name rule, the 200-byte name +
        tags budget, a taken name."""
        options = options or PlanOptions()
        vol = self._volumes.setdefault(disk.source, self.volume(disk))  # kept for the rest of this create
        try:
            handle = snapshot_name(vol.label, tag)
        except KvmkitError as exc:
            raise type(exc)(f"disk {disk.target}: {exc}") from None
        location = {"volume": vol.label, "volume_id": vol.global_id, "tag": tag, "api": self.endpoint.where}
        if options.vm_uuid:
            location["vm_uuid"] = options.vm_uuid
        planned = DiskSnapshot(target=disk.target, driver=self.name, source=disk.source, handle=handle,
                               size_bytes=vol.size, location=location, owner=options.owner)
        try:
            self.tags(planned)
        except KvmkitError as exc:
            raise type(exc)(f"disk {disk.target}: {exc}") from None
        if self._find_snapshot(handle) is not None:
            raise Conflict(f"disk {disk.target}: StorPool snapshot {handle} already exists; kvmkit will not "
                           "overwrite it")
        return planned

    def tags(self, planned: DiskSnapshot) -> dict[str, str]:
        """What `snapshot` marks a planned snapshot with, trimmed to the 200-byte budget (storpool_names.py)."""
        loc = planned.location
        return fit(planned.handle, full_tags(planned.owner, loc["tag"], loc["volume_id"], loc.get("vm_uuid"),
                                             ROLE_SNAPSHOT))

    def snapshot(self, planned: DiskSnapshot) -> DiskSnapshot:
        loc = planned.location
        what = f"disk {planned.target}: snapshot of StorPool volume {loc['volume']}"
        try:
            made = self._call(what, "snapshotCreate", "~" + loc["volume_id"],
                              {"name": planned.handle, "tags": self.tags(planned)}, in_freeze=True)
            gid = made.snapshotGlobalId
        except KvmkitError:
            # a retried call whose first try was done after all: the snapshot is there, ours by its tags
            gid = self._ours(planned, in_freeze=True)
            if not gid:
                raise
        return planned.model_copy(update={"location": {**loc, "snapshot_id": gid}})

    def _ours(self, planned: DiskSnapshot, in_freeze: bool = False) -> str:
        """The globalId of the snapshot under a planned name if it carries this plan's volume and owner tags."""
        found = self._find_snapshot(planned.handle, in_freeze)
        tags = (found.tags or {}) if found is not None else {}
        if found is None or tags.get(TAG_VOLUME) != planned.location["volume_id"] or \
                tags.get(TAG_OWNER) != planned.owner:
            return ""
        return str(found.globalId)

    def serves_as_group(self, disks: Sequence[Disk]) -> bool:
        """One driver talks to one cluster's API, so every StorPool disk of a VM can be in one group snapshot."""
        return bool(disks) and all(self.claims(d) for d in disks)

    def group_snapshot(self, planned: Sequence[DiskSnapshot], vm_label: str, tag: str) -> list[DiskSnapshot]:
        """One VolumesGroupSnapshot call: every volume's snapshot at the same instant, no freeze, no pause. Each
        snapshot carries every ownership tag itself."""
        volumes = [{"volume": "~" + p.location["volume_id"], "name": p.handle, "tags": self.tags(p)}
                   for p in planned]
        try:
            result = self._call(f"group snapshot of {len(planned)} StorPool volume(s) of {vm_label}",
                                "snapshotCreateGroup", {"volumes": volumes})
            made = {r.snapshot: r.snapshotGlobalId for r in result.snapshots}
        except KvmkitError:
            # a retried call whose first try was done after all: every member is there, ours by its tags
            found = [self._ours(p) for p in planned]
            if not all(found):
                raise
            made = {p.handle: gid for p, gid in zip(planned, found, strict=True)}
        group = f"{PREFIX}{vm_label}--{tag}"
        return [p.model_copy(update={"group": group,
                                     "location": {**p.location, "snapshot_id": made.get(p.handle, "")}})
                for p in planned]

    # lookup, ownership, delete ----------------------------------------------------------------------------
    def _find_snapshot(self, name: str, in_freeze: bool = False) -> Any | None:
        try:
            found = self._call(f"looking up StorPool snapshot {name}", "snapshotList", name, in_freeze=in_freeze)
        except NotFound:
            return None
        live = [s for s in found if not s.deleted]  # one StorPool is deleting is as good as gone
        return live[0] if live else None

    def exists(self, snap: DiskSnapshot) -> bool:
        return self._find_snapshot(snap.handle) is not None

    def _attachments(self, global_id: str) -> tuple[list[int], list[int]]:
        """The clients an object is attached to, read-write and read-only (AttachmentsList)."""
        rows = [a for a in self._call("listing StorPool attachments", "attachmentsList")
                if getattr(a, "globalId", None) == global_id]
        return sorted(a.client for a in rows if a.rights == "rw"), sorted(a.client for a in rows if a.rights != "rw")

    def _detach_all(self, what: str, kind: str, global_id: str) -> tuple[list[int], list[int]]:
        """Detach from every client, never forced: something holding it open is refused, not yanked."""
        rw, ro = self._attachments(global_id)
        if rw or ro:
            self._call(f"detaching {what} from StorPool client(s) {', '.join(map(str, rw + ro))}",
                       "volumesReassign", json=[{kind: "~" + global_id, "detach": "all"}])
        return rw, ro

    def delete(self, snap: DiskSnapshot) -> None:
        """A kvmkit-named snapshot (the engine decides whose may go: snapshot/ownership.py), by its globalId, once
        the snapshot under the name is shown to be the one kvmkit made."""
        if not kvmkit_named(snap.handle):
            raise Conflict(f"StorPool snapshot {snap.handle} is not a kvmkit snapshot; kvmkit deletes only its own")
        found = self._find_snapshot(snap.handle)
        if found is None:
            return
        recorded = snap.location.get("snapshot_id")
        if recorded and found.globalId != recorded:
            raise Conflict(f"StorPool snapshot {snap.handle} is {found.globalId}, not {recorded} that kvmkit made; "
                           "kvmkit will not delete it")
        volume_tag, volume_id = (found.tags or {}).get(TAG_VOLUME), snap.location.get("volume_id")
        if volume_tag and volume_id and volume_tag != volume_id:
            raise Conflict(f"StorPool snapshot {snap.handle} is tagged as of volume {volume_tag}, not {volume_id}; "
                           "kvmkit will not delete it")
        self._detach_all(f"StorPool snapshot {snap.handle}", "snapshot", found.globalId)
        try:
            self._call(f"deleting StorPool snapshot {snap.handle}", "snapshotDelete", "~" + found.globalId)
        except NotFound:
            return

    def in_use(self, snap: DiskSnapshot) -> str | None:
        """A snapshot other volumes were created from cannot go before them. The volume it was taken of is no such
        child (StorPool makes a volume's latest snapshot its parent): known from the API's `onVolume` and the
        `kvmkit-vol` tag, since a row recover adopted has no location."""
        summary = self._find_snapshot(snap.handle)
        if summary is None:
            return None
        tags = summary.tags or {}
        own = {summary.onVolume, snap.location.get("volume")} - {None, ""}
        own_ids = {tags.get(TAG_VOLUME), snap.location.get("volume_id")} - {None, ""}
        children = [v.name for v in self._call("listing StorPool volumes", "volumesList")
                    if v.parentName in (snap.handle, "~" + summary.globalId) and v.name not in own
                    and v.globalId not in own_ids]
        if not children:
            return None
        return f"StorPool volume(s) {', '.join(children)} were created from it"

    def owned(self, disk: Disk) -> list[str]:
        """Every kvmkit-named snapshot of this disk's volume, whichever catalog made it (recover sorts them by
        owner): by the `kvmkit-vol` tag (it survives a rename of the volume), else by the volume it was taken of."""
        vol = self.volume(disk)
        return sorted(s.name for s in self._call("listing StorPool snapshots", "snapshotsList")
                      if not s.deleted and kvmkit_named(s.name) and _of_volume(s, vol))

    # Ownership: the `kvmkit` tag on the snapshot -------------------------------------------------------------
    def owner_of(self, snap: DiskSnapshot) -> str | None:
        summary = self._find_snapshot(snap.handle)
        if summary is None:
            return None
        return (summary.tags or {}).get(TAG_OWNER) or None

    def set_owner(self, snap: DiskSnapshot, owner: str) -> None:
        """Tag an existing snapshot as `owner`'s (recover --adopt): one SnapshotUpdate, the other tags kept."""
        self._call(f"marking StorPool snapshot {snap.handle} with its catalog", "snapshotUpdate", snap.handle,
                   {"tags": {TAG_OWNER: owner}})

    def tag_of(self, handle: str) -> str | None:
        """The kvmkit snapshot name in a handle: its `kvmkit-snap` tag, else what follows `kvmkit--<volume>--`.
        None for a name kvmkit did not make and for a revert's safety snapshot (never a snapshot to adopt)."""
        if not kvmkit_named(handle):
            return None
        summary = self._find_snapshot(handle)
        tags = (summary.tags or {}) if summary is not None else {}
        if tags.get(TAG_ROLE) == ROLE_PREREVERT:
            return None
        if tags.get(TAG_SNAP):
            return str(tags[TAG_SNAP])
        for vol in ([summary.onVolume.lstrip("~"), tags.get(TAG_VOLUME)] if summary is not None else []):
            if vol and handle.startswith(f"{PREFIX}{vol}--"):
                return handle[len(f"{PREFIX}{vol}--"):] or None
        _, sep, tag = handle[len(PREFIX):].rpartition("--")
        return tag if sep and tag else None

    # reading (for backup) ---------------------------------------------------------------------------------
    @contextmanager
    def reading(self, snap: DiskSnapshot, timeout_s: float = 30.0) -> Iterator[Path]:
        """The snapshot attached read-only to this host (VolumesReassign `ro`) as /dev/storpool/<snapshot>, and
        detached again afterwards. This API version has no call that streams or diffs a snapshot's data, so a
        backup reads the device (every block: a block device reports no holes)."""
        if self.endpoint.client_id is None:
            raise EnvironmentProblem(f"reading StorPool snapshot {snap.handle} needs this host's client id "
                                     f"(SP_OURID in {self.endpoint.source}, or [storpool] client_id)")
        if not kvmkit_named(snap.handle):
            raise Conflict(f"StorPool snapshot {snap.handle} is not a kvmkit snapshot")
        if self._find_snapshot(snap.handle) is None:
            raise NotFound(f"StorPool snapshot {snap.handle} does not exist")
        client = self.endpoint.client_id
        self._call(f"attaching StorPool snapshot {snap.handle} read-only", "volumesReassign",
                   json=[{"snapshot": snap.handle, "ro": [client]}])
        try:
            if not self._api.volumeDevLinkWait(snap.handle, True, maxTime=timeout_s):
                raise OperationFailed(f"StorPool snapshot {snap.handle} was attached, but {DEV_BY_NAME / snap.handle} "
                                      f"did not appear within {timeout_s:g} s")
            yield DEV_BY_NAME / snap.handle
        finally:
            self._call(f"detaching StorPool snapshot {snap.handle}", "volumesReassign",
                       json=[{"snapshot": snap.handle, "detach": [client]}])

    def open_reader(self, snap: DiskSnapshot) -> FileReader:
        """The snapshot's device, attached read-only for as long as the reader is open (detached on close)."""
        stack = ExitStack()
        try:
            return FileReader(stack.enter_context(self.reading(snap)), on_close=stack.close)
        except BaseException:
            stack.close()
            raise

    def close(self) -> None:
        """The API speaks plain HTTP requests: no connection is held."""

    # revert -----------------------------------------------------------------------------------------------
    def stage_revert(self, disk: Disk, snap: DiskSnapshot, options: RevertOptions) -> StagedRevert:
        vol = self.volume(disk)
        if not kvmkit_named(snap.handle):
            raise Conflict(f"disk {disk.target}: StorPool snapshot {snap.handle} is not a kvmkit snapshot")
        target = self._find_snapshot(snap.handle)
        if target is None:
            raise NotFound(f"disk {disk.target}: StorPool snapshot {snap.handle} is missing")
        safety = snapshot_name(vol.label, f"prerevert-{options.token[:12]}")
        if self._find_snapshot(safety) is None:  # a retried revert with the same token reuses it
            # marked like the snapshot it protects (an adopted row has no location: the tags answer then)
            theirs = target.tags or {}
            tags = fit(safety, full_tags(snap.owner or theirs.get(TAG_OWNER),
                                         snap.location.get("tag") or theirs.get(TAG_SNAP) or "", vol.global_id,
                                         snap.location.get("vm_uuid") or theirs.get(TAG_VM), ROLE_PREREVERT))
            self._call(f"disk {disk.target}: safety snapshot before the revert", "snapshotCreate", vol.ref,
                       {"name": safety, "tags": tags})
        rw, ro = self._attachments(vol.global_id)
        return StagedRevert(disk.target, self.name, StorPoolStaging(volume=vol.label, volume_id=vol.global_id,
                                                                    to=snap.handle, safety=safety, rw=rw, ro=ro))

    def _revert(self, data: StorPoolStaging, to: str) -> None:
        """Detach from every client, revert, give the volume the snapshot's size, re-attach as it was — the
        re-attach also when the revert failed."""
        what = f"StorPool volume {data.volume}"
        self._detach_all(what, "volume", data.volume_id)
        try:
            self._call(f"reverting {what} to {to}", "volumeRevert", "~" + data.volume_id, {"toSnapshot": to})
            snap = self._find_snapshot(to)
            now = self._call(f"looking up {what}", "volumeList", "~" + data.volume_id)
            if snap is not None and now and int(now[0].size) != int(snap.size):
                self._call(f"giving {what} the size of {to}", "volumeUpdate", "~" + data.volume_id,
                           {"size": int(snap.size), "shrinkOk": True})
        finally:
            if data.rw or data.ro:
                self._call(f"re-attaching {what}", "volumesReassign",
                           json=[{"volume": "~" + data.volume_id, **({"rw": data.rw} if data.rw else {}),
                                  **({"ro": data.ro} if data.ro else {})}])

    @staticmethod
    def _staging(staged: StagedRevert) -> StorPoolStaging:
        assert isinstance(staged.data, StorPoolStaging)
        return staged.data

    def swap(self, staged: StagedRevert) -> None:
        data = self._staging(staged)
        self._revert(data, data.to)

    def undo(self, staged: StagedRevert) -> None:
        data = self._staging(staged)
        if self._find_snapshot(data.safety) is not None:
            self._revert(data, data.safety)
            self._call(f"deleting safety snapshot {data.safety}", "snapshotDelete", data.safety)

    def commit(self, staged: StagedRevert) -> None:
        safety = self._staging(staged).safety
        if self._find_snapshot(safety) is not None:
            self._call(f"deleting safety snapshot {safety}", "snapshotDelete", safety)


def _of_volume(summary: Any, vol: Volume) -> bool:
    tagged = (summary.tags or {}).get(TAG_VOLUME)
    return tagged == vol.global_id if tagged else summary.onVolume in (vol.name or None, "~" + vol.global_id)
