"""StorPool driver, on StorPool's own API binding (`pip install storpool`: `storpool.spapi.Api`), no CLI.

* A disk is StorPool's when libvirt attaches it as a block device under /dev/storpool/<name> or
  /dev/storpool-byid/<globalId> (how StorPool's client exposes attached volumes). `plan` looks the volume up
  through the API (by name, or by `~globalId`) and checks that the link the disk uses resolves to the same device
  as the volume's own link, so a stale or hand-made link is refused rather than snapshotted.
* snapshot = one `VolumeSnapshot` call per volume (addressed by `~globalId`, so a rename cannot misdirect it), issued
  concurrently by the engine inside the freeze. A StorPool snapshot is metadata-only on the cluster.
* group snapshot = one `VolumesGroupSnapshot` call across every disk of the VM: consistent across volumes,
  crash-consistent for the VM, with neither freeze nor pause.
* revert = the API's `VolumeRevert` (a metadata operation on the cluster: O(1), the volume keeps its name, globalId
  and device, so the domain XML does not change). It needs the volume closed, i.e. the VM shut off, which the engine
  ensures. To make a multi-disk revert all-or-nothing, `stage_revert` first takes a safety snapshot of the current
  volume (also O(1)); `undo` reverts to it, `commit` deletes it.
* Naming: `kvmkit--<volume>--<snapshot name>` (StorPool snapshot names are cluster-wide, so the volume is in it).
  The name says kvmkit made it; the tags say which kvmkit: every snapshot kvmkit makes carries
  `kvmkit=<catalog id>` (`PlanOptions.owner`, the catalog's `meta.catalog_id`), `kvmkit-vm=<VM uuid>`
  (`PlanOptions.vm_uuid`, from the domain the engine snapshots), `kvmkit-snap=<snapshot name>`,
  `kvmkit-vol=<volume globalId>` and `kvmkit-role` (`snapshot`, or `prerevert` for a revert's safety snapshot).
  `owned` lists every kvmkit-named snapshot of the volume, whichever catalog made it; the `Ownership` capability
  (`owner_of` / `set_owner` / `tag_of`, on the `kvmkit` tag) lets `recover` delete only this catalog's and report
  the rest (snapshot/ownership.py). `delete` refuses any snapshot kvmkit did not name.
* Declared capabilities (Protocols of drivers/base.py): GroupSnapshots, InUse (a snapshot a volume was created
  from), Ownership. Not Flattenable: a StorPool revert leaves no clone behind.
* The token comes from /etc/storpool.conf (the binding's loader) or kvmkit's `[storpool]` section; it is never put
  in a log line, a record or an error message. Calls are made without the binding's retries and with a timeout, so
  an unreachable API is one error line, raised by `plan`, before any freeze.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kvmkit.config import Settings, StorPoolSettings
from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, KvmkitError, NotFound, OperationFailed
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.reading import FileReader
from kvmkit.snapshot.journal import Staging
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk

with contextlib.redirect_stderr(io.StringIO()):  # the binding prints a notice to stderr when simplejson is absent
    from storpool import spapi, spcatch, spconfig

log = logging.getLogger(__name__)

PREFIX = "kvmkit--"
TAG_OWNER = "kvmkit"  # the catalog id (PlanOptions.owner): which kvmkit catalog made it
TAG_VM = "kvmkit-vm"  # the VM uuid (PlanOptions.vm_uuid)
TAG_SNAP = "kvmkit-snap"
TAG_VOLUME = "kvmkit-vol"  # the volume's globalId: survives a rename of the volume
TAG_ROLE = "kvmkit-role"  # "snapshot", or "prerevert" for a revert's safety snapshot
ROLE_SNAPSHOT = "snapshot"
ROLE_PREREVERT = "prerevert"
DEV_BY_NAME = Path("/dev/storpool")
DEV_BY_ID = Path("/dev/storpool-byid")
MAX_NAME = 199  # the binding's VOLUME_NAME_SIZE (200) exclusive

# error names the driver decides on (the fake API uses the same; see tests/fakes/storpool_api.py)
NOT_FOUND = {"objectDoesNotExist"}
TAKEN = {"objectExists"}
BUSY = {"objectInUse", "objectHasChildren", "busy"}
AUTH = {"authFailed", "invalidToken", "authError"}


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    token: str = field(repr=False)
    source: str  # where it was read from, for messages (never the token)
    timeout_s: float = 10.0
    client_id: int | None = None  # this host's StorPool client id (SP_OURID): where snapshots are attached to read

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Volume:
    name: str
    global_id: str
    size: int


def load_endpoint(settings: StorPoolSettings | None, env: dict[str, str] | None = None) -> Endpoint | None:
    """Where the API is, or None when nothing configures StorPool (no [storpool] section, no /etc/storpool.conf)."""
    env = dict(os.environ) if env is None else env
    sp = settings or StorPoolSettings()
    if sp.host:
        token = sp.token or (env.get(sp.token_env, "") if sp.token_env else "")
        return Endpoint(sp.host, sp.port or 81, token, "kvmkit config [storpool]", sp.timeout_s, sp.client_id)
    if not sp.conf.is_file():
        if settings is not None and settings.conf != StorPoolSettings().conf:
            raise InvalidInput(f"StorPool config {sp.conf} (from kvmkit's [storpool] conf) does not exist")
        return None
    loader = type("KvmkitSPConfig", (spconfig.SPConfig,),
                  {"PATH_CONFIG": str(sp.conf), "PATH_CONFIG_DIR": str(sp.conf) + ".d"})
    try:
        cfg = loader(missing_ok=True)
        host, port, token = cfg["SP_API_HTTP_HOST"], int(cfg["SP_API_HTTP_PORT"]), cfg.get("SP_AUTH_TOKEN", "")
        client_id = sp.client_id or (int(cfg["SP_OURID"]) if cfg.get("SP_OURID") else None)
    except (spconfig.SPConfigException, KeyError, ValueError) as exc:
        raise InvalidInput(f"{sp.conf}: not a usable StorPool config ({type(exc).__name__})") from None
    return Endpoint(host, port, token, str(sp.conf), sp.timeout_s, client_id)


class StorPoolStaging(Staging):
    """A revert by the API's VolumeRevert: the volume, the snapshot to revert to, and the safety snapshot that
    makes it undoable until every disk of the VM is reverted."""

    kind: Literal["storpool"] = "storpool"
    volume: str
    volume_id: str
    to: str
    safety: str


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
        self.endpoint = endpoint
        self._api = api or spapi.Api(host=endpoint.host, port=endpoint.port, auth=endpoint.token,
                                     timeout=endpoint.timeout_s, transientRetries=0)
        self._volumes: dict[str, Volume] = {}  # disk source → volume, from plan until release (one create)

    # the API edge: every call goes through here, so every failure becomes one kvmkit error ----------------
    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._api, method)(*args, **kwargs)
        except spapi.ApiError as exc:
            raise self._api_error(what, exc) from None
        except spcatch.InvalidArgumentError as exc:
            raise InvalidInput(f"{what}: {self._redact(str(exc))}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            if isinstance(exc, TimeoutError | socket.timeout):
                reason = f"no answer within {self.endpoint.timeout_s:g} s"
            raise EnvironmentProblem(f"cannot reach the StorPool API at {self.endpoint.where} "
                                     f"(from {self.endpoint.source}): {reason}") from None
        except ValueError:  # not JSON: something else listens there
            raise EnvironmentProblem(f"the service at {self.endpoint.where} (from {self.endpoint.source}) does not "
                                     "answer like the StorPool API") from None

    def _api_error(self, what: str, exc: spapi.ApiError) -> KvmkitError:
        desc = self._redact(f"{exc.name}: {exc.desc}")
        if exc.name in AUTH or exc.status in (401, 403):
            return EnvironmentProblem(f"the StorPool API at {self.endpoint.where} refused kvmkit's token "
                                      f"(from {self.endpoint.source})")
        if exc.name in NOT_FOUND:
            return NotFound(f"{what}: {desc}")
        if exc.name in TAKEN or exc.name in BUSY:
            return Conflict(f"{what}: {desc}")
        return OperationFailed(f"{what}: StorPool API error {desc}")

    def _redact(self, text: str) -> str:
        return text.replace(self.endpoint.token, "***") if self.endpoint.token else text

    # volumes -------------------------------------------------------------------------------------------
    def claims(self, disk: Disk) -> bool:
        if disk.kind != "block":
            return False
        source = Path(disk.source)
        return source.parent in (DEV_BY_NAME, DEV_BY_ID) or os.path.realpath(source).startswith("/dev/sp-")

    def volume(self, disk: Disk) -> Volume:
        """The volume behind a disk, from the API; the disk's link must resolve to the volume's device."""
        if disk.source in self._volumes:
            return self._volumes[disk.source]
        return self._lookup(disk)

    def _lookup(self, disk: Disk) -> Volume:
        source = Path(disk.source)
        if source.parent == DEV_BY_ID:
            ref = "~" + source.name
        elif source.parent == DEV_BY_NAME:
            ref = source.name
        else:  # a device path: find the volume link that resolves to it
            ref = next((link.name for link in _links(DEV_BY_NAME)
                        if os.path.realpath(link) == os.path.realpath(source)), "")
            if not ref:
                raise NotFound(f"disk {disk.target}: {disk.source} is no attached StorPool volume "
                               f"(no link in {DEV_BY_NAME} resolves to it)")
        found = self._call(f"disk {disk.target}: looking up StorPool volume {ref}", "volumeList", ref)
        if not found:
            raise NotFound(f"disk {disk.target}: StorPool volume {ref} does not exist")
        vol = Volume(found[0].name, found[0].globalId, int(found[0].size))
        _check_device(disk, vol)
        return vol

    def release(self) -> None:
        self._volumes.clear()

    # create ---------------------------------------------------------------------------------------------
    def plan(self, disk: Disk, tag: str, options: PlanOptions | None = None) -> DiskSnapshot:
        options = options or PlanOptions()
        vol = self._volumes.setdefault(disk.source, self.volume(disk))  # kept for the rest of this create
        handle = f"{PREFIX}{vol.name}--{tag}"
        if len(handle) > MAX_NAME:
            raise InvalidInput(f"disk {disk.target}: snapshot name {handle[:40]}… would exceed StorPool's "
                               f"{MAX_NAME} characters; use a shorter snapshot name")
        if self._find_snapshot(handle) is not None:
            raise Conflict(f"disk {disk.target}: StorPool snapshot {handle} already exists; kvmkit will not "
                           "overwrite it")
        location = {"volume": vol.name, "volume_id": vol.global_id, "tag": tag, "api": self.endpoint.where}
        if options.vm_uuid:
            location["vm_uuid"] = options.vm_uuid
        return DiskSnapshot(target=disk.target, driver=self.name, source=disk.source, handle=handle,
                            size_bytes=vol.size, location=location, owner=options.owner)

    def tags(self, planned: DiskSnapshot) -> dict[str, str]:
        """What `snapshot` marks a planned snapshot with (the catalog id only when the plan had one)."""
        loc = planned.location
        return _tags(planned.owner, loc["tag"], loc["volume_id"], loc.get("vm_uuid"), ROLE_SNAPSHOT)

    def snapshot(self, planned: DiskSnapshot) -> DiskSnapshot:
        loc = planned.location
        made = self._call(f"disk {planned.target}: snapshot of StorPool volume {loc['volume']}", "snapshotCreate",
                          "~" + loc["volume_id"], {"name": planned.handle, "tags": self.tags(planned)})
        return planned.model_copy(update={"location": {**loc, "snapshot_id": made.snapshotGlobalId}})

    def serves_as_group(self, disks: Sequence[Disk]) -> bool:
        """One driver talks to one cluster's API, so every StorPool disk of a VM can be in one group snapshot."""
        return bool(disks) and all(self.claims(d) for d in disks)

    def group_snapshot(self, planned: Sequence[DiskSnapshot], vm_label: str, tag: str) -> list[DiskSnapshot]:
        """One VolumesGroupSnapshot call: every volume's snapshot at the same instant, no freeze, no pause."""
        common = {k: v for k, v in self.tags(planned[0]).items() if k != TAG_VOLUME}
        volumes = [{"volume": "~" + p.location["volume_id"], "name": p.handle,
                    "tags": {TAG_VOLUME: p.location["volume_id"]}} for p in planned]
        result = self._call(f"group snapshot of {len(planned)} StorPool volume(s) of {vm_label}",
                            "snapshotCreateGroup", {"volumes": volumes, "tags": common})
        made = {r.snapshot: r.snapshotGlobalId for r in result.snapshots}
        group = f"{PREFIX}{vm_label}--{tag}"
        return [p.model_copy(update={"group": group,
                                     "location": {**p.location, "snapshot_id": made.get(p.handle, "")}})
                for p in planned]

    # lookup, ownership, delete ----------------------------------------------------------------------------
    def _find_snapshot(self, name: str) -> Any | None:
        try:
            found = self._call(f"looking up StorPool snapshot {name}", "snapshotList", name)
        except NotFound:
            return None
        live = [s for s in found if not s.deleted]  # one being deleted by the cluster is as good as gone
        return live[0] if live else None

    def exists(self, snap: DiskSnapshot) -> bool:
        return self._find_snapshot(snap.handle) is not None

    def delete(self, snap: DiskSnapshot) -> None:
        """Any kvmkit-named snapshot (the engine decides whose may go: see snapshot/ownership.py)."""
        if not _kvmkit_named(snap.handle):
            raise Conflict(f"StorPool snapshot {snap.handle} is not a kvmkit snapshot; kvmkit deletes only its own")
        if self._find_snapshot(snap.handle) is None:
            return
        try:
            self._call(f"deleting StorPool snapshot {snap.handle}", "snapshotDelete", snap.handle)
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
                    if v.parentName == snap.handle and v.name not in own and v.globalId not in own_ids]
        if not children:
            return None
        return f"StorPool volume(s) {', '.join(children)} were created from it"

    def owned(self, disk: Disk) -> list[str]:
        """Every kvmkit-named snapshot of this disk's volume, whichever catalog made it (recover sorts them by
        owner): by the `kvmkit-vol` tag (it survives a rename of the volume), else by the volume it was taken of."""
        vol = self.volume(disk)
        return sorted(s.name for s in self._call("listing StorPool snapshots", "snapshotsList")
                      if not s.deleted and _kvmkit_named(s.name) and _of_volume(s, vol))

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
        if not _kvmkit_named(handle):
            return None
        summary = self._find_snapshot(handle)
        tags = (summary.tags or {}) if summary is not None else {}
        if tags.get(TAG_ROLE) == ROLE_PREREVERT:
            return None
        if tags.get(TAG_SNAP):
            return str(tags[TAG_SNAP])
        on_volume = f"{PREFIX}{summary.onVolume}--" if summary is not None and summary.onVolume else ""
        if on_volume and handle.startswith(on_volume):
            return handle[len(on_volume):] or None
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
        if not _kvmkit_named(snap.handle):
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
        if not _kvmkit_named(snap.handle):
            raise Conflict(f"disk {disk.target}: StorPool snapshot {snap.handle} is not a kvmkit snapshot")
        target = self._find_snapshot(snap.handle)
        if target is None:
            raise NotFound(f"disk {disk.target}: StorPool snapshot {snap.handle} is missing")
        safety = f"{PREFIX}{vol.name}--prerevert-{options.token[:12]}"
        if self._find_snapshot(safety) is None:  # a retried revert with the same token reuses it
            # marked like the snapshot it protects (an adopted row has no location: the tags answer then)
            theirs = target.tags or {}
            tags = _tags(snap.owner or theirs.get(TAG_OWNER), snap.location.get("tag") or theirs.get(TAG_SNAP) or "",
                         vol.global_id, snap.location.get("vm_uuid") or theirs.get(TAG_VM), ROLE_PREREVERT)
            self._call(f"disk {disk.target}: safety snapshot before the revert", "snapshotCreate",
                       "~" + vol.global_id, {"name": safety, "tags": tags})
        return StagedRevert(disk.target, self.name, StorPoolStaging(volume=vol.name, volume_id=vol.global_id,
                                                                    to=snap.handle, safety=safety))

    def _revert(self, data: StorPoolStaging, to: str) -> None:
        self._call(f"reverting StorPool volume {data.volume} to {to}", "volumeRevert", "~" + data.volume_id,
                   {"toSnapshot": to})

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


def _kvmkit_named(name: str) -> bool:
    return name.startswith(PREFIX)


def _of_volume(summary: Any, vol: Volume) -> bool:
    tagged = (summary.tags or {}).get(TAG_VOLUME)
    return tagged == vol.global_id if tagged else summary.onVolume in (vol.name, "~" + vol.global_id)


def _tags(owner: str | None, snap_name: str, volume_id: str, vm_uuid: str | None, role: str) -> dict[str, str]:
    """kvmkit's tags on a snapshot; no `kvmkit` tag without a catalog id (such a snapshot is "unknown")."""
    tags = {TAG_SNAP: snap_name, TAG_VOLUME: volume_id, TAG_ROLE: role}
    if owner:
        tags[TAG_OWNER] = owner
    if vm_uuid:
        tags[TAG_VM] = vm_uuid
    return {k: v for k, v in tags.items() if v}


def _links(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_symlink()]
    except OSError:
        return []


def _check_device(disk: Disk, vol: Volume) -> None:
    """The disk's link and the volume's own links must lead to one device (a stale link is refused)."""
    device = os.path.realpath(disk.source)
    for link in (DEV_BY_NAME / vol.name, DEV_BY_ID / vol.global_id):
        if link.is_symlink() and os.path.realpath(link) != device:
            raise Conflict(f"disk {disk.target}: {disk.source} resolves to {device}, but StorPool volume "
                           f"{vol.name} is attached as {os.path.realpath(link)}: a stale link; kvmkit will not "
                           "snapshot a volume it cannot identify")
