"""Lab VMs shaped like the hosts kvmkit's users run: disks defined exactly as each cloud's agent defines them.

The default lab is kind to kvmkit (raw files, a ceph.conf on disk). Production is not:
- cloudstack: primary storage is a folder named by the pool's UUID; volumes are files named by their own UUID with
  no extension; a root disk is a qcow2 overlay on the template (also a UUID-named qcow2); RBD volumes are
  `<source protocol='rbd' name='pool/uuid'><host …/></source><auth username=…><secret type='ceph' uuid=…/>`,
  the secret's UUID being the RBD pool's, and no ceph.conf is named (CloudStack's LibvirtVMDef, read, not copied);
- nova: the root disk is an RBD clone of a Glance image snapshot (`images/<id>@snap` → `vms/<uuid>_disk`), a local
  qcow2 disk has a raw base in `_base/` (Nova's imagebackend), the `nova` user's key in a libvirt secret;
- libvirt (virt-manager, plain virsh): `.qcow2` files with backing chains two deep;
- cloudstack-storpool: unnamed volumes of the FAKE StorPool API attached by globalId (benchmarks/storpool_fake/lab.py).
Every shape's Ceph user is restricted (`profile rbd` on its own pools only) and its key lives only in a libvirt
secret: nothing kvmkit can read from a keyring file.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import libvirt

from kvmkit.errors import Conflict, EnvironmentProblem
from kvmkit.lab import ceph, disks, domain, procs
from kvmkit.lab.state import LabDisk, LabState

Shape = Literal["default", "cloudstack", "nova", "libvirt", "cloudstack-storpool"]
SHAPES: tuple[Shape, ...] = ("default", "cloudstack", "nova", "libvirt", "cloudstack-storpool")

# Each shape's Ceph user and the pools it may use (read-only pools after the `:`), as the clouds' docs set them up.
USERS: dict[str, tuple[str, list[str], list[str]]] = {
    "default": ("lab", [ceph.POOL], []),  # the default layout's RBD disks, when the lab's Ceph runs cephx
    "cloudstack": ("cloudstack", ["cloudstack"], []),
    "nova": ("nova", ["vms"], ["images"]),
}


@dataclass(frozen=True)
class ShapedDisks:
    """What a shape made for one VM: the domain's disk specs and the lab's record of them."""

    specs: tuple[domain.FileDisk | domain.RbdDisk | domain.BlockDisk, ...]
    records: tuple[LabDisk, ...]


def lab_uuid(state: LabState, what: str) -> str:
    """A stable UUID per lab and purpose, so a re-run of `lab up` finds what the last one made."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvmkit-lab:{state.dir}:{what}"))


def _qemu_img(*args: str) -> None:
    procs.run(["qemu-img", *args], f"qemu-img {args[0]}")


def _qcow2_from_ext4(path: Path, size_mib: int) -> None:
    """A qcow2 image holding a fresh ext4 (the guest mounts it), made from a sparse raw file."""
    raw = path.with_name(path.name + ".raw-staging")
    disks.make_file_disk(raw, size_mib)
    try:
        _qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    finally:
        raw.unlink(missing_ok=True)


def _overlay(top: Path, backing: Path, backing_format: str) -> None:
    """A qcow2 overlay naming its backing file by absolute path, as CloudStack, Nova and virt-manager write them."""
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing), "-F", backing_format, str(top))


def ensure_secret(state: LabState, conn: libvirt.virConnect, secret_uuid: str, user: str, key_b64: str) -> None:
    """A persistent, non-private ceph secret holding the user's key (CloudStack and Nova define them so)."""
    xml = (f"<secret ephemeral='no' private='no'><uuid>{secret_uuid}</uuid>"
           f"<usage type='ceph'><name>client.{user} {secret_uuid} secret</name></usage></secret>")
    secret = conn.secretDefineXML(xml)
    secret.setValue(base64.b64decode(key_b64))
    if secret_uuid not in state.secrets:
        state.secrets.append(secret_uuid)


def undefine_secrets(state: LabState, conn: libvirt.virConnect) -> None:
    for secret_uuid in list(state.secrets):
        try:
            conn.secretLookupByUUIDString(secret_uuid).undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise
        state.secrets.remove(secret_uuid)


def default_rbd_spec(state: LabState, conn: libvirt.virConnect, image: str) -> domain.RbdDisk:
    """A default-layout RBD disk: with cephx, authenticated like a cloud's (a restricted user, key in a secret)."""
    assert state.ceph is not None
    if state.ceph.auth != "cephx":
        return domain.RbdDisk(state.ceph.pool, image, "127.0.0.1", state.ceph.port, state.ceph.conf)
    user, secret_uuid = _ceph_user(state, conn, "default")
    return _rbd_spec(state, state.ceph.pool, image, user, secret_uuid)


def _ceph_user(state: LabState, conn: libvirt.virConnect, shape: str) -> tuple[str, str]:
    """(user, secret uuid) of the shape's restricted Ceph user, made once per lab."""
    assert state.ceph is not None
    if state.ceph.auth != "cephx":
        raise Conflict(f"the lab's Ceph runs without auth; the {shape} shape needs cephx: "
                       "`kvmkit lab down`, then `kvmkit lab up --shape …`")
    user, pools, read_only = USERS[shape]
    for pool in pools + read_only:
        ceph.create_pool(state.ceph.conf, pool)
    key = ceph.create_client(state.ceph.conf, user, pools, read_only)
    # CloudStack names the secret after its RBD primary storage pool; Nova takes `rbd_secret_uuid` from nova.conf.
    secret_uuid = lab_uuid(state, f"{shape}-rbd-secret")
    ensure_secret(state, conn, secret_uuid, user, key)
    return user, secret_uuid


def _rbd_spec(state: LabState, pool: str, image: str, user: str, secret_uuid: str) -> domain.RbdDisk:
    assert state.ceph is not None
    return domain.RbdDisk(pool, image, "127.0.0.1", state.ceph.port, None, auth_username=user,
                          secret_uuid=secret_uuid)


def make_disks(state: LabState, conn: libvirt.virConnect, name: str, shape: Shape, size_mib: int) -> ShapedDisks:
    if state.pool is None:
        raise EnvironmentProblem("the lab has no storage pool: run kvmkit lab up first")
    if shape == "cloudstack-storpool":
        from kvmkit.benchmarks.storpool_fake import lab as storpool_lab

        uuids = [lab_uuid(state, f"{name}-{what}") for what in ("vm", "vol-0", "vol-1")]
        return ShapedDisks(*storpool_lab.make_disks(state, name, uuids[0], uuids[1:], size_mib))
    if state.ceph is None:
        raise EnvironmentProblem(f"the {shape} shape needs the lab's Ceph (kvmkit lab up --shape {shape})")
    maker = {"cloudstack": _cloudstack, "nova": _nova, "libvirt": _libvirt}.get(shape)
    if maker is None:
        raise EnvironmentProblem(f"shape {shape!r} is made by lab.add_vm, not by shapes")
    return maker(state, conn, name, size_mib)


def _cloudstack(state: LabState, conn: libvirt.virConnect, name: str, size_mib: int) -> ShapedDisks:
    assert state.pool is not None and state.ceph is not None
    primary = state.pool.path / lab_uuid(state, "cloudstack-primary-storage")
    primary.mkdir(exist_ok=True)
    primary.chmod(0o755)
    template = primary / lab_uuid(state, "cloudstack-template")
    if not template.exists():
        _qcow2_from_ext4(template, size_mib)
    root = primary / lab_uuid(state, f"{name}-root")
    data = primary / lab_uuid(state, f"{name}-data")
    _overlay(root, template, "qcow2")
    _qcow2_from_ext4(data, size_mib)
    user, secret_uuid = _ceph_user(state, conn, "cloudstack")
    specs: list[domain.FileDisk | domain.RbdDisk] = [domain.FileDisk(root, "qcow2"), domain.FileDisk(data, "qcow2")]
    records = [LabDisk(target="vda", kind="file", source=str(root), size_mib=size_mib),
               LabDisk(target="vdb", kind="file", source=str(data), size_mib=size_mib)]
    for index, target in enumerate(("vdc", "vdd")):
        image = lab_uuid(state, f"{name}-rbd-{index}")
        disks.make_rbd_disk(state.ceph.conf, "cloudstack", image, size_mib)
        specs.append(_rbd_spec(state, "cloudstack", image, user, secret_uuid))
        records.append(LabDisk(target=target, kind="rbd", source=f"cloudstack/{image}", size_mib=size_mib))
    return ShapedDisks(tuple(specs), tuple(records))


def _nova(state: LabState, conn: libvirt.virConnect, name: str, size_mib: int) -> ShapedDisks:
    assert state.pool is not None and state.ceph is not None
    user, secret_uuid = _ceph_user(state, conn, "nova")
    glance_image = lab_uuid(state, "nova-glance-image")
    disks.ensure_rbd_image_snapshot(state.ceph.conf, "images", glance_image, "snap", size_mib)
    instance = lab_uuid(state, f"{name}-instance")
    disks.clone_rbd_image(state.ceph.conf, ("images", glance_image, "snap"), ("vms", f"{instance}_disk"))
    instances = state.pool.path / "nova-instances"
    base_dir = instances / "_base"
    base_dir.mkdir(parents=True, exist_ok=True)
    for folder in (instances, base_dir):
        folder.chmod(0o755)
    base = base_dir / uuid.uuid5(uuid.NAMESPACE_URL, f"ephemeral:{state.dir}").hex  # Nova: a hash, no extension
    if not base.exists():
        disks.make_file_disk(base, size_mib)
    vm_dir = instances / instance
    vm_dir.mkdir(exist_ok=True)
    vm_dir.chmod(0o755)
    local = vm_dir / "disk.local"
    _overlay(local, base, "raw")
    specs = (_rbd_spec(state, "vms", f"{instance}_disk", user, secret_uuid), domain.FileDisk(local, "qcow2"))
    records = (LabDisk(target="vda", kind="rbd", source=f"vms/{instance}_disk", size_mib=size_mib),
               LabDisk(target="vdb", kind="file", source=str(local), size_mib=size_mib))
    return ShapedDisks(specs, records)


def _libvirt(state: LabState, conn: libvirt.virConnect, name: str, size_mib: int) -> ShapedDisks:
    assert state.pool is not None
    images = state.pool.path / "libvirt-images"
    images.mkdir(exist_ok=True)
    images.chmod(0o755)
    specs: list[domain.FileDisk | domain.RbdDisk] = []
    records: list[LabDisk] = []
    for target in ("vda", "vdb"):
        base = images / f"{name}-{target}-base.qcow2"
        mid = images / f"{name}-{target}-mid.qcow2"
        top = images / f"{name}-{target}.qcow2"
        _qcow2_from_ext4(base, size_mib)
        _overlay(mid, base, "qcow2")
        _overlay(top, mid, "qcow2")
        specs.append(domain.FileDisk(top, "qcow2"))
        records.append(LabDisk(target=target, kind="file", source=str(top), size_mib=size_mib))
    return ShapedDisks(tuple(specs), tuple(records))


def chain_files(disk: LabDisk) -> list[Path]:
    """The files a shaped file disk made for itself alone (its chain below the top, for libvirt-shaped VMs);
    shared bases (a CloudStack template, Nova's _base) are kept until the pool goes."""
    top = Path(disk.source)
    if top.name.endswith(".qcow2") and top.parent.name == "libvirt-images":
        stem = top.name.removesuffix(".qcow2")
        return [top.with_name(f"{stem}-mid.qcow2"), top.with_name(f"{stem}-base.qcow2")]
    return []
