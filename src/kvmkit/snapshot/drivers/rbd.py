"""Ceph RBD driver on librbd's Python bindings (Debian's python3-rbd/python3-rados): no `rbd` CLI on the data path.

* snapshot = `Image.create_snap("kvmkit-<name>")` on an image opened *before* the freeze, so the window holds only
  the snapshot round trips, all issued concurrently by the engine;
* group snapshot = one `rbd.Group.create_snap` across every image of the VM — atomic, crash-consistent, no freeze
  and no pause. kvmkit keeps one group per VM, `kvmkit-<vm>-<uuid8>`;
* revert by clone (default, O(1)): clone the snapshot to `<image>.kvmkit-new`, rename the image to
  `<image>.kvmkit-base-<n>` (it keeps every older snapshot and is the clone's parent), rename the clone to the
  image's name; or, with `--rollback`, `rollback_to_snap` (O(image size)) after a safety snapshot that makes it
  undoable until every disk of the VM is reverted.
Only snapshots named `kvmkit-*` (and groups named `kvmkit-*`) are kvmkit's: nothing else is ever deleted.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from kvmkit.config import CephSettings
from kvmkit.errors import Conflict, EnvironmentProblem, NotFound, OperationFailed
from kvmkit.snapshot.drivers.base import PlanOptions, RevertOptions, StagedRevert
from kvmkit.snapshot.drivers.rbd_io import RbdReader, RbdWriter
from kvmkit.snapshot.journal import HandleMove, RbdCloneStaging, RbdRollbackStaging
from kvmkit.snapshot.model import DiskSnapshot
from kvmkit.virt.disks import Disk

if TYPE_CHECKING:
    import rados
    import rbd

PREFIX = "kvmkit-"
OWNER_KEY = "kvmkit.owner."  # image-meta key + snapshot name → id of the catalog that made that snapshot
BASE_MARK = ".kvmkit-base-"
NEW_SUFFIX = ".kvmkit-new"
TIMEOUTS = {"client_mount_timeout": "10", "rados_osd_op_timeout": "15", "rados_mon_op_timeout": "10"}


@dataclass(frozen=True)
class ClusterKey:
    conf: str | None
    mon_host: str
    client_id: str
    keyring: str | None
    secret_uuid: str | None = None  # the libvirt secret holding the key (CloudStack, Nova): read, never stored


def mon_host(hosts: tuple[tuple[str, int], ...]) -> str:
    """The disk's <host> elements as Ceph's mon_host; port 3300 speaks msgr2, anything else (6789) msgr1."""
    def one(host: str, port: int) -> str:
        host = f"[{host}]" if ":" in host else host
        return f"{'v2' if port == 3300 else 'v1'}:{host}:{port}"
    return ",".join(one(h, p) for h, p in hosts)


def split_handle(handle: str) -> tuple[str, str, str]:
    """'pool/image@snap' → (pool, image, snap)."""
    spec, _, snap = handle.partition("@")
    pool, _, image = spec.partition("/")
    return pool, image, snap


_LIVE: weakref.WeakSet[RbdDriver] = weakref.WeakSet()  # drivers whose clusters may still be connected


@atexit.register
def _shut_down_at_exit() -> None:
    """Shut every cluster connection down before the interpreter tears itself down: a librados client still
    connected while Python finalizes its objects can crash the process at exit (seen as a SIGSEGV after a
    successful `snapshot revert`). Operations that end earlier close their drivers themselves."""
    for driver in list(_LIVE):
        try:
            driver.close()
        except Exception:  # at exit, nothing more can be done about a cluster that will not shut down
            pass


class RbdDriver:
    name = "rbd"

    def __init__(self, ceph: CephSettings, rados: ModuleType | None = None, rbd: ModuleType | None = None,
                 libvirt_uri: str | None = None) -> None:
        """ceph: kvmkit's configured cluster (used where a disk or snapshot does not say); rados/rbd: the binding
        modules (Debian's python3-rados/python3-rbd by default), passed in so another implementation can stand in;
        libvirt_uri: where the domains' libvirt secrets (cephx keys) live (None: qemu:///system)."""
        if rados is None or rbd is None:
            import rados as rados_module
            import rbd as rbd_module

            rados, rbd = rados or rados_module, rbd or rbd_module
        self._ceph = ceph
        self._rados, self._rbd = rados, rbd
        self._libvirt_uri = libvirt_uri
        self._secret_keys: dict[str, str] = {}
        self._clusters: dict[ClusterKey, rados.Rados] = {}
        self._keys: dict[str, ClusterKey] = {}  # pool/image and pool → its cluster, learned from the domain XML
        self._open: dict[str, tuple[rados.Ioctx, rbd.Image]] = {}  # planned handle → opened before the freeze
        self._rolled: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        _LIVE.add(self)

    # clusters -----------------------------------------------------------------------------------------
    def _settings(self) -> CephSettings:
        return self._ceph

    def _key(self, disk: Disk) -> ClusterKey:
        """The cluster as the disk names it: its monitors, user and secret; kvmkit's config fills the gaps."""
        ceph = self._settings()
        conf = disk.config_file or (str(ceph.conf) if ceph.conf and not disk.hosts else None)
        return ClusterKey(conf, mon_host(disk.hosts), disk.auth_username or ceph.client_id,
                          str(ceph.keyring) if ceph.keyring else None, disk.auth_secret_uuid)

    def _secret_key(self, key: ClusterKey) -> str:
        assert key.secret_uuid is not None
        if key.secret_uuid not in self._secret_keys:
            from kvmkit.virt.secrets import ceph_key

            uri = self._libvirt_uri or "qemu:///system"
            self._secret_keys[key.secret_uuid] = ceph_key(uri, key.secret_uuid, key.client_id)
        return self._secret_keys[key.secret_uuid]

    def _cluster(self, key: ClusterKey) -> rados.Rados:
        with self._lock:
            cluster = self._clusters.get(key)
            if cluster is None:
                conf = dict(TIMEOUTS)
                if key.mon_host:
                    conf["mon_host"] = key.mon_host
                if key.keyring:
                    conf["keyring"] = key.keyring
                elif key.secret_uuid:
                    conf["key"] = self._secret_key(key)
                where = key.mon_host or key.conf or "default ceph.conf"
                if key.conf and not Path(key.conf).exists():
                    raise EnvironmentProblem(f"cannot reach the Ceph cluster ({where}): its conf file {key.conf} "
                                             "does not exist")
                # monitors named by the disk: no conf file (a CloudStack host often has none); else the default
                conffile = key.conf or (None if key.mon_host else "")
                try:
                    cluster = self._rados.Rados(rados_id=key.client_id, conffile=conffile, conf=conf)
                    cluster.connect(timeout=10)
                except self._rados.Error as exc:
                    raise EnvironmentProblem(f"cannot reach the Ceph cluster ({where}): {exc}") from exc
                self._clusters[key] = cluster
            return cluster

    def _open_ioctx(self, pool: str, key: ClusterKey) -> rados.Ioctx:
        try:
            return self._cluster(key).open_ioctx(pool)
        except self._rados.ObjectNotFound as exc:
            raise NotFound(f"Ceph pool {pool!r} does not exist") from exc
        except self._rados.Error as exc:
            raise EnvironmentProblem(f"Ceph pool {pool!r}: {exc}") from exc

    @contextmanager
    def _ioctx(self, pool: str, key: ClusterKey) -> Iterator[rados.Ioctx]:
        ioctx = self._open_ioctx(pool, key)
        try:
            yield ioctx
        finally:
            ioctx.close()

    def _key_for(self, handle_or_spec: str, location: dict[str, str] | None = None) -> ClusterKey:
        if location:
            return ClusterKey(location.get("conf") or None, location.get("mon_host", ""),
                              location.get("client_id", "admin"), location.get("keyring") or None,
                              location.get("secret_uuid") or None)
        pool, image, _ = split_handle(handle_or_spec)
        base = image.split(BASE_MARK)[0].removesuffix(NEW_SUFFIX)
        key = self._keys.get(f"{pool}/{image}") or self._keys.get(f"{pool}/{base}") or self._keys.get(pool)
        if key is None:  # e.g. recover after a restart: fall back to kvmkit's configured cluster
            ceph = self._settings()
            key = ClusterKey(str(ceph.conf) if ceph.conf else None, "", ceph.client_id,
                             str(ceph.keyring) if ceph.keyring else None)
        return key

    def learn(self, disk: Disk) -> None:
        key = self._key(disk)
        self._keys[disk.source] = key
        self._keys.setdefault(disk.rbd_pool_image[0], key)

    def _learn_snap(self, snap: DiskSnapshot) -> None:
        if snap.location:
            key = self._key_for(snap.handle, snap.location)
            pool, image, _ = split_handle(snap.handle)
            self._keys.setdefault(f"{pool}/{image}", key)
            self._keys.setdefault(pool, key)

    def release(self) -> None:
        for ioctx, image in self._open.values():
            image.close()
            ioctx.close()
        self._open.clear()

    def close(self) -> None:
        """Shut every cluster connection down (each holds librados threads): the end of an operation."""
        self.release()
        with self._lock:
            clusters, self._clusters = list(self._clusters.values()), {}
        for cluster in clusters:
            cluster.shutdown()

    # reading and restoring ----------------------------------------------------------------------------
    def open_reader(self, snap: DiskSnapshot) -> RbdReader:
        """The snapshot, read-only, on the cluster its record names (monitors, user, libvirt secret)."""
        self._learn_snap(snap)
        pool, _, _ = split_handle(snap.handle)
        return RbdReader(self._rbd, self._open_ioctx(pool, self._key_for(snap.handle, snap.location)), snap.handle)

    def open_writer(self, dest: str, size: int, replace: bool, location: dict[str, str] | None) -> RbdWriter:
        """A restore into pool/image on the cluster `location` names (the backed-up disk's own record; None:
        the cluster a disk of this pool was seen on, else kvmkit's configured one)."""
        pool, _, _ = split_handle(dest)
        return RbdWriter(self._rbd, self._open_ioctx(pool, self._key_for(dest, location or None)), dest, size,
                         replace)

    # the contract -------------------------------------------------------------------------------------
    def claims(self, disk: Disk) -> bool:
        return disk.kind == "network" and disk.protocol == "rbd"

    def plan(self, disk: Disk, tag: str, options: PlanOptions | None = None) -> DiskSnapshot:
        self.learn(disk)
        pool, image_name = disk.rbd_pool_image
        snap_name = PREFIX + tag
        handle = f"{disk.source}@{snap_name}"
        ioctx = self._open_ioctx(pool, self._key(disk))
        try:
            image = self._rbd.Image(ioctx, image_name)
        except self._rbd.ImageNotFound as exc:
            ioctx.close()
            raise NotFound(f"disk {disk.target}: RBD image {disk.source} does not exist") from exc
        self._open[handle] = (ioctx, image)  # kept open until release(): the freeze holds only create_snap
        if any(s["name"] == snap_name for s in image.list_snaps()):
            raise Conflict(f"disk {disk.target}: {handle} already exists; kvmkit will not overwrite it")
        size = image.size()
        key = self._key(disk)
        location = {k: v for k, v in (("conf", key.conf), ("mon_host", key.mon_host), ("client_id", key.client_id),
                                      ("keyring", key.keyring), ("secret_uuid", key.secret_uuid)) if v}
        return DiskSnapshot(target=disk.target, driver=self.name, source=disk.source, handle=handle, size_bytes=size,
                            location=location, owner=(options or PlanOptions()).owner)

    def snapshot(self, planned: DiskSnapshot) -> DiskSnapshot:
        _, _, snap_name = split_handle(planned.handle)
        opened = self._open.get(planned.handle)
        try:
            if opened is not None:
                opened[1].create_snap(snap_name)
                if planned.owner:
                    opened[1].metadata_set(OWNER_KEY + snap_name, planned.owner)
            else:
                with self._image(planned.handle) as img:
                    img.create_snap(snap_name)
                    if planned.owner:
                        img.metadata_set(OWNER_KEY + snap_name, planned.owner)
        except self._rbd.Error as exc:
            raise OperationFailed(f"disk {planned.target}: create_snap {planned.handle}: {exc}") from exc
        return planned

    # Ownership: an image-meta key per snapshot (it moves with the image when a revert renames it to a base)
    def owner_of(self, snap: DiskSnapshot) -> str | None:
        self._learn_snap(snap)
        _, _, snap_name = split_handle(snap.handle)
        try:
            with self._image(snap.handle, read_only=True) as img:
                return str(img.metadata_get(OWNER_KEY + snap_name))
        except (KeyError, self._rbd.ImageNotFound):
            return None
        except self._rbd.Error as exc:
            if isinstance(exc, self._rbd.ObjectNotFound):  # librbd reports a missing key as ENOENT
                return None
            raise EnvironmentProblem(f"RBD {snap.handle}: {exc}") from exc

    def set_owner(self, snap: DiskSnapshot, owner: str) -> None:
        self._learn_snap(snap)
        _, _, snap_name = split_handle(snap.handle)
        try:
            with self._image(snap.handle) as img:
                img.metadata_set(OWNER_KEY + snap_name, owner)
        except self._rbd.Error as exc:
            raise OperationFailed(f"RBD {snap.handle}: cannot mark its catalog: {exc}") from exc

    def tag_of(self, handle: str) -> str | None:
        _, _, snap_name = split_handle(handle)
        return snap_name.removeprefix(PREFIX) if snap_name.startswith(PREFIX) else None

    def _forget_owner(self, img: rbd.Image, snap_name: str) -> None:
        try:
            img.metadata_remove(OWNER_KEY + snap_name)
        except (KeyError, self._rbd.Error):
            pass  # never marked (made before ownership), or already gone

    @contextmanager
    def _image(self, handle: str, read_only: bool = False) -> Iterator[rbd.Image]:
        pool, image_name, _ = split_handle(handle)
        with (self._ioctx(pool, self._key_for(handle)) as ioctx,
              self._rbd.Image(ioctx, image_name, read_only=read_only) as img):
            yield img

    def exists(self, snap: DiskSnapshot) -> bool:
        self._learn_snap(snap)
        _, _, snap_name = split_handle(snap.handle)
        try:
            if snap.group:
                return any(s["name"] == snap_name for s in self._group_snaps(snap.group))
            with self._image(snap.handle, read_only=True) as img:
                return any(s["name"] == snap_name for s in img.list_snaps())
        except self._rbd.ImageNotFound:
            return False
        except self._rbd.Error as exc:
            raise EnvironmentProblem(f"RBD {snap.handle}: {exc}") from exc

    def delete(self, snap: DiskSnapshot) -> None:
        self._learn_snap(snap)
        pool, image_name, snap_name = split_handle(snap.handle)
        if not snap_name.startswith(PREFIX):
            raise Conflict(f"{snap.handle} is not a kvmkit snapshot; kvmkit deletes only its own")
        try:
            with self._image(snap.handle) as img:
                user = [s["name"] for s in img.list_snaps()]
                if snap_name in user:
                    if img.is_protected_snap(snap_name):
                        img.unprotect_snap(snap_name)
                    img.remove_snap(snap_name)
                    remaining = len(user) - 1
                else:
                    group = snap.group or self._group_of(img, pool)
                    if group:
                        self._remove_group_snap(group, snap_name)
                    remaining = len(user)
                self._forget_owner(img, snap_name)
            if BASE_MARK in image_name and remaining == 0:
                self._drop_base(pool, image_name, snap.handle)
        except self._rbd.ImageNotFound:
            return
        except self._rbd.ImageBusy as exc:
            raise Conflict(f"{snap.handle} is in use: {exc}") from exc
        except self._rbd.Error as exc:
            raise OperationFailed(f"deleting {snap.handle}: {exc}") from exc

    def in_use(self, snap: DiskSnapshot) -> str | None:
        """A snapshot with clone children (after a revert by clone) cannot go until they are flattened."""
        self._learn_snap(snap)
        _, _, snap_name = split_handle(snap.handle)
        try:
            with self._image(snap.handle, read_only=True) as img:
                if snap_name not in [s["name"] for s in img.list_snaps()]:
                    return None
                img.set_snap(snap_name)
                children = [f"{c['pool']}/{c['image']}" for c in img.list_children2()]
        except self._rbd.ImageNotFound:
            return None
        except self._rbd.Error as exc:
            raise EnvironmentProblem(f"RBD {snap.handle}: cannot list its clones: {exc}") from exc
        if not children:
            return None
        return f"image(s) {', '.join(children)} were cloned from it by a revert; flatten them first"

    def owned(self, disk: Disk) -> list[str]:
        self.learn(disk)
        handles = []
        try:
            with self._image(f"{disk.source}@", read_only=True) as img:
                handles += [f"{disk.source}@{s['name']}" for s in img.list_snaps() if s["name"].startswith(PREFIX)]
                group = self._group_of(img, disk.rbd_pool_image[0])
            if group and group.split("/", 1)[1].startswith(PREFIX):
                handles += [f"{disk.source}@{s['name']}" for s in self._group_snaps(group)
                            if s["name"].startswith(PREFIX)]
        except self._rbd.ImageNotFound:
            return []
        except self._rbd.Error as exc:  # e.g. a timeout on a cluster that does not answer: one line, not a trace
            raise EnvironmentProblem(f"RBD {disk.source}: cannot list its snapshots: {exc}") from exc
        return sorted(handles)

    # groups -------------------------------------------------------------------------------------------
    def serves_as_group(self, disks: Sequence[Disk]) -> bool:
        """One atomic group snapshot needs every disk in one cluster and one pool (RBD groups are per pool)."""
        keys = {self._key(d) for d in disks}
        pools = {d.rbd_pool_image[0] for d in disks}
        return all(self.claims(d) for d in disks) and len(keys) == 1 and len(pools) == 1

    def group_snapshot(self, planned: Sequence[DiskSnapshot], vm_label: str, tag: str) -> list[DiskSnapshot]:
        pool = split_handle(planned[0].handle)[0]
        images = [split_handle(p.handle)[1] for p in planned]
        group_name = f"{PREFIX}{vm_label}"
        snap_name = PREFIX + tag
        self.release()  # group snapshots open the images themselves
        with self._ioctx(pool, self._key_for(planned[0].handle)) as ioctx:
            try:
                self._rbd.RBD().group_create(ioctx, group_name)
            except (self._rbd.ImageExists, self._rbd.ObjectExists):
                pass
            group = self._rbd.Group(ioctx, group_name)
            try:
                members = {g["name"] for g in group.list_images()}
                for image in images:
                    if image not in members:
                        self._leave_empty_group(ioctx, pool, image, group_name)
                        group.add_image(ioctx, image)
                for stray in members - set(images):
                    group.remove_image(ioctx, stray)
            except self._rbd.Error as exc:
                raise OperationFailed(f"RBD group {pool}/{group_name}: cannot gather its images: {exc}") from exc
            try:
                group.create_snap(snap_name)
                owner = planned[0].owner
                if owner:
                    for image in images:
                        with self._rbd.Image(ioctx, image) as img:
                            img.metadata_set(OWNER_KEY + snap_name, owner)
            except self._rbd.Error as exc:
                raise OperationFailed(f"RBD group snapshot {pool}/{group_name}@{snap_name}: {exc}") from exc
        return [p.model_copy(update={"group": f"{pool}/{group_name}"}) for p in planned]

    def _leave_empty_group(self, ioctx: rados.Ioctx, pool: str, image: str, wanted: str) -> None:
        """An image is in one RBD group at most. One in another kvmkit group that holds no snapshot any more (a
        VM's own group, before it joined a consistency group) leaves it; one whose group still has snapshots, or
        is not kvmkit's, is refused: moving it would break those snapshots."""
        with self._rbd.Image(ioctx, image, read_only=True) as img:
            info = img.group()
            current = self._group_of(img, pool)
        if current is not None and info.get("pool") not in (pool, ioctx.get_pool_id()):
            raise Conflict(f"RBD image {pool}/{image} is in group {info.get('name')} of another pool (an image can "
                           "be in one RBD group only); snapshot without --crash-consistent")
        if current is None or current == f"{pool}/{wanted}":
            return
        name = current.split("/", 1)[1]
        if not name.startswith(PREFIX) or self._group_snaps(current):
            raise Conflict(f"RBD image {pool}/{image} is already in group {current} (an image can be in one RBD "
                           "group only); delete that group's snapshots first, or snapshot without "
                           "--crash-consistent (frozen guests, one snapshot per image)")
        self._rbd.Group(ioctx, name).remove_image(ioctx, image)

    def _group_of(self, img: rbd.Image, pool: str) -> str | None:
        """The image's group as `pool/name`. librbd gives the group's pool as an id; kvmkit makes its groups in
        the image's own pool, so that pool's name is used (a group elsewhere is not kvmkit's)."""
        info = img.group()
        return f"{pool}/{info['name']}" if info and info.get("name") else None

    def _group_snaps(self, group: str) -> list[dict]:
        pool, name = group.split("/", 1)
        with self._ioctx(pool, self._key_for(f"{group}@")) as ioctx:
            try:
                return list(self._rbd.Group(ioctx, name).list_snaps())
            except self._rbd.ObjectNotFound:
                return []

    def _remove_group_snap(self, group: str, snap_name: str) -> None:
        pool, name = group.split("/", 1)
        with self._ioctx(pool, self._key_for(f"{group}@")) as ioctx:
            try:
                self._rbd.Group(ioctx, name).remove_snap(snap_name)
            except self._rbd.ObjectNotFound:
                pass

    def _drop_base(self, pool: str, image_name: str, handle: str) -> None:
        """A base image left by a revert by clone goes with its last snapshot, once no clone depends on it."""
        with self._ioctx(pool, self._key_for(handle)) as ioctx:
            try:
                self._rbd.RBD().remove(ioctx, image_name)
            except self._rbd.Error:
                # still referenced: a clone, a group snapshot of kvmkit's VM group (EMLINK) … it goes with the
                # last reference; keeping it a little longer loses nothing
                pass

    # revert -------------------------------------------------------------------------------------------
    def stage_revert(self, disk: Disk, snap: DiskSnapshot, options: RevertOptions) -> StagedRevert:
        self.learn(disk)
        self._learn_snap(snap)
        pool, image_name = disk.rbd_pool_image
        _, _, snap_name = split_handle(snap.handle)
        if not self.exists(snap):
            raise NotFound(f"disk {disk.target}: snapshot {snap.handle} is missing")
        staging: RbdCloneStaging | RbdRollbackStaging
        with self._ioctx(pool, self._key(disk)) as ioctx:
            if options.rollback or snap.group:
                # group snapshots are rolled back (librbd clones only from user snapshots); a safety snapshot
                # makes the rollback undoable until every disk of the VM is done
                safety = f"{PREFIX}prerevert-{int(time.time() * 1000)}"
                with self._rbd.Image(ioctx, image_name) as img:
                    img.create_snap(safety)
                staging = RbdRollbackStaging(pool=pool, image=image_name, snap=snap_name, group=snap.group,
                                             safety=safety, token=options.token)
            else:
                new = image_name + NEW_SUFFIX
                try:
                    self._rbd.RBD().remove(ioctx, new)  # ours by name: a leftover of an interrupted revert
                except self._rbd.ImageNotFound:
                    pass
                with self._rbd.Image(ioctx, image_name, read_only=True) as img:
                    features = img.features()
                self._rbd.RBD().clone(ioctx, image_name, snap_name, ioctx, new, features=features)
                base = f"{image_name}{BASE_MARK}{int(time.time() * 1000)}"
                # after the swap the older snapshots live on the base image: revert re-points their handles
                staging = RbdCloneStaging(pool=pool, image=image_name, snap=snap_name, group=snap.group, new=new,
                                          base=base, handle_moves=[HandleMove(old_prefix=f"{pool}/{image_name}@",
                                                                              new_prefix=f"{pool}/{base}@")])
        return StagedRevert(disk.target, self.name, staging)

    def _staging(self, staged: StagedRevert) -> RbdCloneStaging | RbdRollbackStaging:
        if not isinstance(staged.data, RbdCloneStaging | RbdRollbackStaging):
            raise OperationFailed(f"disk {staged.target}: revert data of kind {staged.data.kind!r} is not the rbd "
                                  "driver's")
        return staged.data

    def swap(self, staged: StagedRevert) -> None:
        d = self._staging(staged)
        with self._ioctx(d.pool, self._key_for(f"{d.pool}/{d.image}@")) as ioctx:
            if isinstance(d, RbdRollbackStaging):
                if d.group:
                    self._group_rollback_once(ioctx, d.group, d.snap, d.token)
                else:
                    with self._rbd.Image(ioctx, d.image) as img:
                        img.rollback_to_snap(d.snap)
                return
            names = set(self._rbd.RBD().list(ioctx))
            if d.base not in names:
                self._rbd.RBD().rename(ioctx, d.image, d.base)
            self._rbd.RBD().rename(ioctx, d.new, d.image)

    def _group_rollback_once(self, ioctx: rados.Ioctx, group: str, snap_name: str, token: str) -> None:
        # every disk of the group reports the same group snapshot: roll the group back once per revert
        if (token, group, snap_name) not in self._rolled:
            self._rbd.Group(ioctx, group.split("/", 1)[1]).rollback_to_snap(snap_name)
            self._rolled.add((token, group, snap_name))

    def undo(self, staged: StagedRevert) -> None:
        d = self._staging(staged)
        with self._ioctx(d.pool, self._key_for(f"{d.pool}/{d.image}@")) as ioctx:
            if isinstance(d, RbdRollbackStaging):
                with self._rbd.Image(ioctx, d.image) as img:
                    if d.safety in [s["name"] for s in img.list_snaps()]:
                        img.rollback_to_snap(d.safety)
                        img.remove_snap(d.safety)
                return
            names = set(self._rbd.RBD().list(ioctx))
            if d.base in names:
                if d.image in names:
                    self._rbd.RBD().rename(ioctx, d.image, d.new)
                self._rbd.RBD().rename(ioctx, d.base, d.image)
            if d.new in set(self._rbd.RBD().list(ioctx)):
                self._rbd.RBD().remove(ioctx, d.new)

    def commit(self, staged: StagedRevert) -> None:
        d = self._staging(staged)
        if isinstance(d, RbdRollbackStaging):
            with self._ioctx(d.pool, self._key_for(f"{d.pool}/{d.image}@")) as ioctx, \
                    self._rbd.Image(ioctx, d.image) as img:
                if d.safety in [s["name"] for s in img.list_snaps()]:
                    img.remove_snap(d.safety)
        # clone: the renamed base image stays as the clone's parent and keeps the older snapshots

    def flatten(self, disk: Disk) -> None:
        """Copy the parent's data into a clone so the base image (and its snapshots) can go: O(image size)."""
        with self._image(f"{disk.source}@") as img:
            img.flatten()

    def flatten_if_clone(self, disk: Disk) -> bool:
        """Flatten a disk only if a kvmkit revert made it a clone: a clone of anything else (Nova's root disk of a
        Glance image) is how its platform shares data, not kvmkit's to undo."""
        self.learn(disk)
        with self._image(f"{disk.source}@", read_only=True) as img:
            try:
                _pool, parent, parent_snap = img.parent_info()
            except self._rbd.ImageNotFound:  # no parent: not a clone
                return False
        if BASE_MARK not in parent or not parent_snap.startswith(PREFIX):
            return False
        self.flatten(disk)
        return True
