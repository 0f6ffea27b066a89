"""`kvmkit lab`: bring the local lab up, report it, take it down — as library functions the CLI and tests share."""

from __future__ import annotations

import concurrent.futures
import glob
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import libvirt
from pydantic import BaseModel

from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, OperationFailed
from kvmkit.lab import ceph, disks, domain, guest, libvirtd, net, pool, procs, rgw, scratch, shapes
from kvmkit.lab.rgw import RgwState
from kvmkit.lab.state import LabDisk, LabState, LabVm, load, locked, save
from kvmkit.virt import agent
from kvmkit.virt.connection import check_vm_name, connection

log = logging.getLogger(__name__)
Storage = Literal["file", "rbd", "mixed"]
Progress = Callable[[str], None]
AGENT_TIMEOUT_S = 90.0
FIO_GUEST_MIB = 384  # the fio initramfs is ~90 MB (fio links librbd, ICU …) and lives in guest RAM


def vm_name(lab_dir: Path, index: int) -> str:
    """lab1, lab2 … for the default lab; <dir name>1 … for another (tests use their own lab beside the user's)."""
    return f"{lab_dir.name}{index}"


def _guest_dir(lab_dir: Path) -> Path:
    # Beside the lab folder, not inside it: `lab down` removes the lab, the guest build is a reusable cache.
    return lab_dir.parent / "guest-cache"


def up(lab_dir: Path, uri: str, *, vms: int = 1, disks_per_vm: int = 2, with_ceph: bool = False,
       storage: Storage | None = None, disk_size_mib: int = 1024, with_fio: bool = False, with_rgw: bool = False,
       shape: shapes.Shape = "default", progress: Progress = lambda _m: None) -> LabState:
    """Idempotent: what already runs is kept, what is missing is made. On failure, what this call started stops.
    with_rgw: also an S3 gateway on the Ceph (for S3 backup targets); it implies Ceph, not RBD disks.
    shape: VMs laid out as CloudStack, Nova or virt-manager lay theirs out, on a Ceph with cephx (lab/shapes.py)."""
    if not 0 <= vms <= 16 or not 0 <= disks_per_vm <= 26:
        raise InvalidInput("--vms must be 0-16 and --disks 0-26")
    if shape not in shapes.SHAPES:
        raise InvalidInput(f"--shape must be one of {', '.join(shapes.SHAPES)}")
    storage = storage or ("rbd" if with_ceph else "file")
    with_ceph = with_ceph or storage != "file" or with_rgw or shape in ("cloudstack", "nova")
    procs.require_root()
    with locked(lab_dir):
        state = load(lab_dir) or LabState(dir=lab_dir, uri=uri)
        made: _Made = _Made()
        try:
            _up(state, made, vms, disks_per_vm, with_ceph, storage, disk_size_mib, with_fio, shape, progress)
            if with_rgw and (state.rgw is None or not rgw.running(state.rgw)):
                made.rgw = True
                _start_rgw(state, progress)
        except BaseException:
            _undo(state, made)
            raise
        return state


class _Made:
    """What one `up` call created, so a failure can stop exactly that and leave the rest as it was."""

    def __init__(self) -> None:
        self.pids: list[str] = []
        self.pool = False
        self.ceph = False
        self.rgw = False
        self.vms: list[str] = []


def _up(state: LabState, made: _Made, vms: int, disks_per_vm: int, with_ceph: bool, storage: Storage,
        disk_size_mib: int, with_fio: bool, shape: shapes.Shape, progress: Progress) -> None:
    lab_dir = state.dir
    lab_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.chmod(0o755)
    kvm_ok, state.accel_reason = libvirtd.kvm_usable()
    state.accel = "kvm" if kvm_ok else "tcg"
    started = libvirtd.ensure_running(state.uri, lab_dir / "log")
    if started:
        state.started_pids.update(virtlogd=started[0], libvirtd=started[1])
        made.pids = ["virtlogd", "libvirtd"]
        progress("started libvirtd")
    save(state)
    _drop_stale(state, progress)
    if state.pool is None:
        state.pool = pool.create(lab_dir)
        made.pool = True
        save(state)
        note = f" ({state.pool.reason})" if state.pool.reason else ""
        progress(f"pool: {state.pool.kind} at {state.pool.path}{note}")
    if with_ceph and (state.ceph is None or not procs.alive(state.ceph.mon_pid)):
        t0 = time.monotonic()
        state.ceph = ceph.start(lab_dir / "ceph", auth="none" if shape == "default" else "cephx")
        made.ceph = True
        save(state)
        progress(f"ceph: mon on 127.0.0.1:{state.ceph.port}, pool {state.ceph.pool}, "
                 f"up in {time.monotonic() - t0:.1f} s")
    if shape != "default":
        wanted = [f"{lab_dir.name}-{shape}{i}" for i in range(1, vms + 1)]
        for name in wanted:
            if state.vm(name) is None:
                made.vms.append(name)
                add_shaped_vm(state, name, shape, size_mib=min(disk_size_mib, 256), start=False)
                progress(f"{name}: defined, disks laid out as {shape} lays them out")
        start_vms(state, wanted, progress)
        return
    wanted = [vm_name(lab_dir, i) for i in range(1, vms + 1)]
    for name in wanted:
        if state.vm(name) is None:
            made.vms.append(name)
            add_vm(state, name, **_disk_layout(storage, disks_per_vm), size_mib=disk_size_mib, start=False,
                   with_fio=with_fio, memory_mib=FIO_GUEST_MIB if with_fio else 128)
            progress(f"{name}: defined with {disks_per_vm} {storage} disk(s)")
    start_vms(state, wanted, progress)


def start_rgw(lab_dir: Path, progress: Progress = lambda _m: None) -> RgwState:
    """The lab's S3 gateway, started unless it runs (tests call this; `lab up --rgw` does the same)."""
    procs.require_root()
    with locked(lab_dir):
        state = load(lab_dir)
        if state is None or state.ceph is None or not procs.alive(state.ceph.mon_pid):
            raise EnvironmentProblem(f"the lab in {lab_dir} runs no Ceph: kvmkit lab up --ceph first")
        if state.rgw is None or not rgw.running(state.rgw):
            _start_rgw(state, progress)
        assert state.rgw is not None
        return state.rgw


def stop_rgw(lab_dir: Path) -> None:
    """Stop the lab's S3 gateway (the rest of the lab stays): its threads poll, and a test session that no longer
    needs it should not leave that load on a 2-core host under the tests that measure CPU congestion."""
    with locked(lab_dir):
        state = load(lab_dir)
        if state is not None and _stop_rgw(state):
            save(state)


def _stop_rgw(state: LabState) -> bool:
    """Stop the gateway the state records, and forget it; False if there was none."""
    if state.rgw is None:
        return False
    rgw.stop(state.rgw)
    state.rgw = None
    return True


def _start_rgw(state: LabState, progress: Progress) -> None:
    assert state.ceph is not None
    t0 = time.monotonic()
    state.rgw = rgw.start(state.ceph)
    save(state)
    progress(f"rgw: S3 at {state.rgw.endpoint}, keys in {state.rgw.credentials}, up in {time.monotonic() - t0:.1f} s")


def _drop_stale(state: LabState, progress: Progress) -> None:
    """After a reboot or a killed session the record outlives what it describes: forget (and undefine) what died."""
    if state.pool is not None and not pool.attached(state.pool):
        progress("pool: was unmounted; its VMs are recreated")
        for vm in [vm for vm in state.vms if any(d.kind == "file" for d in vm.disks)]:
            remove_vm(state, vm.name)
        pool.destroy(state.pool)
        state.pool = None
    if state.ceph is not None and not procs.alive(state.ceph.mon_pid):
        progress("ceph: was not running; it and its VMs are recreated")
        for vm in [vm for vm in state.vms if any(d.kind == "rbd" for d in vm.disks)]:
            remove_vm(state, vm.name, keep_rbd=True)
        ceph.stop(state.ceph)
        shutil.rmtree(state.ceph.dir, ignore_errors=True)
        state.ceph = None
    if state.rgw is not None and (state.ceph is None or not rgw.running(state.rgw)):
        _stop_rgw(state)
    with connection(state.uri) as conn:
        for vm in list(state.vms):
            try:
                conn.lookupByName(vm.name)
            except libvirt.libvirtError:
                progress(f"{vm.name}: domain was gone; it is recreated")
                remove_vm(state, vm.name)
    save(state)


def _undo(state: LabState, made: _Made) -> None:
    for name in made.vms:
        try:
            remove_vm(state, name)
        except Exception as exc:  # keep undoing the rest; report the first failure only
            log.warning("undo: removing %s failed: %s", name, exc)
    if made.rgw:
        _stop_rgw(state)
    if made.ceph and state.ceph is not None:
        ceph.stop(state.ceph)
        state.ceph = None
    if made.pool and state.pool is not None:
        pool.destroy(state.pool)
        state.pool = None
    for name in made.pids:
        procs.stop(state.started_pids.pop(name), name, sig=signal.SIGTERM, timeout_s=15)
    if state.vms or state.ceph or state.pool:
        save(state)
    else:
        shutil.rmtree(state.dir, ignore_errors=True)


def _disk_layout(storage: Storage, count: int) -> dict[str, int]:
    if storage == "file":
        return {"file_disks": count, "rbd_disks": 0}
    if storage == "rbd":
        return {"file_disks": 0, "rbd_disks": count}
    return {"file_disks": min(1, count), "rbd_disks": max(0, count - 1)}


def add_vm(state: LabState, name: str, *, file_disks: int, rbd_disks: int, size_mib: int = 1024,
           memory_mib: int = 128, with_fio: bool = False, agent_running: bool = True, start: bool = True,
           filesystems: Literal["every", "first"] = "every", progress: Progress = lambda _m: None,
           block_disks: tuple[Path, ...] = (), network: bool = False) -> LabVm:
    """Define one lab VM (its disks made fresh); the caller holds the lab lock or owns the state.
    block_disks: existing host block devices attached after the file and RBD disks; whoever made them removes
    them (the lab only detaches them with the VM). network: a virtio-net NIC on the lab's bridge (lab/net.py) and
    iperf3 + sockperf in the guest."""
    check_vm_name(name)
    if rbd_disks and state.ceph is None:
        raise InvalidInput(f"VM {name}: RBD disks need the lab's Ceph (kvmkit lab up --ceph)")
    if state.pool is None:
        raise EnvironmentProblem("the lab has no storage pool: run kvmkit lab up first")
    with connection(state.uri) as conn:
        _refuse_existing(conn, name)
        lab_disks: list[LabDisk] = []
        specs: list[domain.FileDisk | domain.RbdDisk | domain.BlockDisk] = []
        for index in range(file_disks + rbd_disks):
            target = domain.disk_target(index)
            if index < file_disks:
                path = state.pool.path / f"{name}-{target}.raw"
                disks.make_file_disk(path, size_mib, filesystem=filesystems == "every" or index == 0)
                lab_disks.append(LabDisk(target=target, kind="file", source=str(path), size_mib=size_mib))
                specs.append(domain.FileDisk(path))
            else:
                assert state.ceph is not None
                image = f"{name}-{target}"
                disks.make_rbd_disk(state.ceph.conf, state.ceph.pool, image, size_mib)
                lab_disks.append(LabDisk(target=target, kind="rbd", source=f"{state.ceph.pool}/{image}",
                                         size_mib=size_mib))
                specs.append(shapes.default_rbd_spec(state, conn, image))
        for index, device in enumerate(block_disks, start=file_disks + rbd_disks):
            if not device.is_block_device():
                raise InvalidInput(f"VM {name}: {device} is not a block device")
            lab_disks.append(LabDisk(target=domain.disk_target(index), kind="block", source=str(device),
                                     size_mib=0))
            specs.append(domain.BlockDisk(device))
        vm = _define(state, conn, name, specs, lab_disks, memory_mib=memory_mib, with_fio=with_fio,
                     agent_running=agent_running, network=network)
    if start:
        start_vms(state, [name], progress)
    return vm


def add_shaped_vm(state: LabState, name: str, shape: shapes.Shape, *, size_mib: int = 256, start: bool = True,
                  progress: Progress = lambda _m: None) -> LabVm:
    """Define one VM whose disks are laid out as a cloud's agent lays them out (lab/shapes.py)."""
    check_vm_name(name)
    with connection(state.uri) as conn:
        _refuse_existing(conn, name)
        made = shapes.make_disks(state, conn, name, shape, size_mib)
        save(state)  # the secret it may have defined is recorded before anything can fail
        vm = _define(state, conn, name, list(made.specs), list(made.records), shape=shape)
    if start:
        start_vms(state, [name], progress)
    return vm


def _refuse_existing(conn: libvirt.virConnect, name: str) -> None:
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    raise Conflict(f"a domain named {name!r} already exists and is not the lab's; remove it or rename")


def _define(state: LabState, conn: libvirt.virConnect, name: str,
            specs: list[domain.FileDisk | domain.RbdDisk | domain.BlockDisk],
            lab_disks: list[LabDisk], *, memory_mib: int = 128, with_fio: bool = False, agent_running: bool = True,
            shape: str = "default", network: bool = False) -> LabVm:
    image = guest.build(_guest_dir(state.dir), with_fio=with_fio, net=network)
    bridge = net.ensure_bridge(state.dir).name if network else None
    console_log = state.dir / "log" / f"{name}.console.log"
    console_log.parent.mkdir(parents=True, exist_ok=True)
    if not agent_running:
        image = guest.GuestImage(image.kernel, image.initrd, image.cmdline + " kvmkit_noagent")
    spec = domain.VmSpec(name=name, image=image, console_log=console_log, disks=tuple(specs),
                         memory_mib=memory_mib, domain_type="kvm" if state.accel == "kvm" else "qemu",
                         bridge=bridge)
    conn.defineXML(domain.domain_xml(spec))
    vm = LabVm(name=name, disks=lab_disks, memory_mib=memory_mib, with_fio=with_fio, agent=agent_running,
               console_log=console_log, shape=shape)
    state.vms.append(vm)
    save(state)
    return vm


def start_vms(state: LabState, names: list[str], progress: Progress = lambda _m: None) -> None:
    """Start the VMs together (they boot in parallel) and wait until every agent answers."""
    with connection(state.uri) as conn:
        doms = {}
        for name in names:
            dom = conn.lookupByName(name)
            if not dom.isActive():
                vm = state.vm(name)
                if vm is not None:
                    vm.console_log.unlink(missing_ok=True)
                try:
                    dom.create()
                except libvirt.libvirtError as exc:
                    raise OperationFailed(f"VM {name}: start failed: {exc.get_error_message()}") from None
            doms[name] = dom
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(doms))) as pool_:
            waits = {name: pool_.submit(wait_for_agent, dom, state.vm(name)) for name, dom in doms.items()
                     if (vm := state.vm(name)) is None or vm.agent}
            for name, fut in waits.items():
                fut.result()
                progress(f"{name}: agent ready ({time.monotonic() - t0:.1f} s)")


def wait_for_agent(dom: libvirt.virDomain, vm: LabVm | None, timeout_s: float = AGENT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not agent.ping(dom, timeout_s=1):
        if time.monotonic() > deadline or not dom.isActive():
            tail = console_tail(vm.console_log) if vm else ""
            raise OperationFailed(
                f"VM {dom.name()}: guest agent did not answer within {timeout_s:.0f} s; console: {tail}"
            )
        time.sleep(0.25)


def console_tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no console log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty)"


def remove_vm(state: LabState, name: str, keep_rbd: bool = False) -> None:
    """Destroy, undefine and delete the disks of one lab VM (RBD images too, unless their cluster is gone)."""
    vm = state.vm(name)
    if vm is None:
        return
    with connection(state.uri) as conn:
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    for disk in vm.disks:
        if disk.kind == "file":
            for leftover in Path(disk.source).parent.glob(glob.escape(Path(disk.source).name) + "*"):
                leftover.unlink(missing_ok=True)
            for chained in shapes.chain_files(disk):
                chained.unlink(missing_ok=True)
        elif disk.kind == "block":
            continue  # not the lab's: its maker removes it
        elif not keep_rbd and state.ceph is not None and procs.alive(state.ceph.mon_pid):
            pool_name, _, image = disk.source.partition("/")
            disks.purge_rbd_image(state.ceph.conf, pool_name, image)
    state.vms.remove(vm)
    save(state)


class LabDiskStatus(BaseModel):
    target: str
    source: str
    driver: str


class LabVmStatus(BaseModel):
    name: str
    state: str
    disks: list[LabDiskStatus]
    agent_ready: bool


class CephStatus(BaseModel):
    health: str
    conf: Path
    pool: str
    port: int


class RgwStatus(BaseModel):
    endpoint: str
    running: bool
    credentials: Path


class LabStatus(BaseModel):
    up: bool
    dir: Path
    accel: str | None = None
    pool: dict | None = None
    vms: list[LabVmStatus] = []
    ceph: CephStatus | None = None
    rgw: RgwStatus | None = None


_STATE_NAMES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
                libvirt.VIR_DOMAIN_CRASHED: "crashed"}


def status(lab_dir: Path) -> LabStatus:
    from kvmkit.virt.disks import parse_disks

    state = load(lab_dir)
    if state is None:
        return LabStatus(up=False, dir=lab_dir)
    vms: list[LabVmStatus] = []
    if libvirtd.reachable(state.uri):
        with connection(state.uri) as conn:
            for vm in state.vms:
                try:
                    dom = conn.lookupByName(vm.name)
                except libvirt.libvirtError:
                    vms.append(LabVmStatus(name=vm.name, state="missing", disks=[], agent_ready=False))
                    continue
                running = dom.isActive()
                live = [LabDiskStatus(target=d.target, source=d.source,
                                      driver=d.protocol if d.kind == "network" and d.protocol else d.kind)
                        for d in parse_disks(dom.XMLDesc(0))]
                vms.append(LabVmStatus(name=vm.name, state=_STATE_NAMES.get(dom.state()[0], "other"),
                                       disks=live, agent_ready=bool(running and agent.ping(dom, timeout_s=1))))
    ceph_status = None
    if state.ceph is not None:
        health = ceph.health(state.ceph.conf) if procs.alive(state.ceph.mon_pid) else "DOWN"
        ceph_status = CephStatus(health=health, conf=state.ceph.conf, pool=state.ceph.pool, port=state.ceph.port)
    rgw_status = RgwStatus(endpoint=state.rgw.endpoint, running=rgw.running(state.rgw),
                           credentials=state.rgw.credentials) if state.rgw else None
    return LabStatus(up=True, dir=lab_dir, accel=state.accel,
                     pool=state.pool.model_dump(mode="json") if state.pool else None, vms=vms, ceph=ceph_status,
                     rgw=rgw_status)


def _other_domains(uri: str) -> list[str]:
    """Domains still defined on the libvirtd (after this lab removed its own): not this lab's to stop."""
    if not libvirtd.reachable(uri):
        return []
    with connection(uri) as conn:
        return sorted(dom.name() for dom in conn.listAllDomains(0))


def down(lab_dir: Path, progress: Progress = lambda _m: None) -> bool:
    """Stop exactly what the lab started and remove what it made; False when there was no lab."""
    procs.require_root()
    with locked(lab_dir):
        state = load(lab_dir)
        if state is None:
            return False
        started = libvirtd.ensure_running(state.uri, state.dir / "log") if state.vms else []
        if started:
            state.started_pids.update(virtlogd=started[0], libvirtd=started[1])
        if libvirtd.reachable(state.uri):
            for vm in list(state.vms):
                # the lab's Ceph goes with the lab: its images need no removal one by one (and an image that a
                # killed client still watches, for ~30 s, would refuse it)
                remove_vm(state, vm.name, keep_rbd=state.ceph is not None)
                progress(f"{vm.name}: destroyed and undefined")
        if state.secrets and libvirtd.reachable(state.uri):
            with connection(state.uri) as conn:
                shapes.undefine_secrets(state, conn)
            progress("secrets: undefined")
        if net.remove_bridge(state.dir):
            progress("bridge: removed")
        for what in scratch.stop(state, libvirt_up=libvirtd.reachable(state.uri)):
            progress(f"{what}: stopped (left by a benchmark)")
        if _stop_rgw(state):
            progress("rgw: stopped")
        from kvmkit.benchmarks.storpool_fake import lab as storpool_lab  # the cloudstack-storpool shape's fake API

        if storpool_lab.stop(state):
            progress("fake StorPool API: stopped")
        if state.ceph is not None:
            ceph.stop(state.ceph)
            progress("ceph: stopped")
        if state.pool is not None:
            pool.destroy(state.pool)
            progress(f"pool: removed {state.pool.path}")
        others = _other_domains(state.uri) if "libvirtd" in state.started_pids else []
        if others:  # another lab (or the operator) runs VMs on the libvirtd this lab started: it stays
            progress(f"libvirtd: left running for {len(others)} other domain(s) ({', '.join(others[:3])} …)")
        else:
            for name in ("libvirtd", "virtlogd"):
                if name in state.started_pids:
                    procs.stop(state.started_pids[name], name, sig=signal.SIGTERM, timeout_s=15)
                    progress(f"{name}: stopped (pid {state.started_pids[name]})")
        shutil.rmtree(lab_dir, ignore_errors=True)
        return True
