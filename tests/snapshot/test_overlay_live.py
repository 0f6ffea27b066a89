"""Fragmented file disks take the O(1) overlay barrier; filesystems without reflink need --allow-full-copy."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.errors import EnvironmentProblem, OperationFailed
from kvmkit.lab import disks, lab
from kvmkit.lab.lab import wait_for_agent
from kvmkit.lab.state import load
from kvmkit.snapshot.drivers.file.overlay import OVERLAY_MARK, extent_count
from kvmkit.snapshot.engine import Engine
from kvmkit.virt import agent
from kvmkit.virt.connection import live_disks
from tests.conftest import TEST_LAB_DIR
from tests.snapshot.conftest import kvmkit

P = TEST_LAB_DIR.name  # every VM and file of these tests starts with the lab folder's name

pytestmark = pytest.mark.lab
EXTENTS = 12_000  # a reflink of this many extents costs ~0.2 s here: enough to prove the path, quick to make


@pytest.fixture(scope="module")
def frag_vm(lab_state, snap_env) -> str:
    state = load(lab_state.dir)
    name = f"{P}-frag"
    if state.vm(name) is None:
        lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=256, start=False)
        disks.fragment(Path(state.vm(name).disks[0].source), EXTENTS)
        lab.start_vms(state, [name])
    return name


def single_images(conn, vm: str) -> list[Path]:
    sources = [Path(d.source) for d in live_disks(conn.lookupByName(vm))]
    for source in sources:
        assert OVERLAY_MARK not in source.name
        assert not list(source.parent.glob(f"{source.name}{OVERLAY_MARK}*")), "overlay files left behind"
    return sources


@pytest.mark.parametrize("barrier", ["libvirt", "qmp"])
def test_fragmented_disk_snapshot_takes_the_barrier_and_reverts_to_the_same_data(engine, conn, lab_state, frag_vm,
                                                                                 barrier):
    engine.extent_limit = 1000
    engine.overlay_barrier = barrier
    disk = single_images(conn, frag_vm)[0]
    assert extent_count(disk) >= EXTENTS
    dom = conn.lookupByName(frag_vm)
    before = agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/d bs=64k count=32 2>/dev/null && sync && "
                                    "sha256sum /mnt/vda/d").split()[0]
    snap = engine.create(frag_vm, "fr1")
    assert snap.disks[0].method == "overlay" and snap.disks[0].extents == engine.extent_limit + 1
    assert snap.after_thaw_ms > 0
    single_images(conn, frag_vm)
    assert dom.XMLDesc(0).count("<backingStore") <= 1 and "kvmkit-overlay" not in dom.XMLDesc(0)
    if barrier == "qmp":  # QEMU's own graph is back on libvirt's node, the overlay node gone
        from kvmkit.snapshot.drivers.file.overlay import qmp

        nodes = {n["node-name"] for n in qmp(dom, "query-named-block-nodes", {"flat": True})}
        assert not any(n.startswith("kvmkit-ov-") for n in nodes), nodes
    agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/d bs=64k count=32 2>/dev/null && sync")
    engine.revert(frag_vm, "fr1", force_stop=True)
    dom = conn.lookupByName(frag_vm)
    assert agent.guest_shell(dom, "sha256sum /mnt/vda/d").split()[0] == before
    engine.delete(frag_vm, "fr1")


def die_between_barrier_and_commit(env: dict[str, str], vm: str, name: str, barrier: str = "qmp",
                                   watchdog_too: bool = True) -> None:
    """`snapshot create` held between barrier and commit (a hanging failpoint), then SIGKILLed — its watchdog
    first when `watchdog_too`: everything died, as in a host crash, and only `recover` is left to repair."""
    env = {**env, "KVMKIT_FAILPOINT": "overlay-before-commit=hang", "KVMKIT_REFLINK_EXTENT_LIMIT": "1000",
           "KVMKIT_OVERLAY_BARRIER": barrier}
    proc = subprocess.Popen([sys.executable, "-m", "kvmkit", "snapshot", "create", vm, "--name", name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "failpoint overlay-before-commit: hanging" in line:
                break
        else:
            raise AssertionError(f"kvmkit ended before the failpoint (exit {proc.wait()})")
        if watchdog_too:
            for pid in watchdog_pids():
                os.kill(pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def watchdog_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"kvmkit.snapshot.watchdog" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("barrier", ["libvirt", "qmp"])
def test_kill_9_between_barrier_and_commit_is_repaired_by_recover(snap_env, conn, frag_vm, barrier):
    die_between_barrier_and_commit(snap_env, frag_vm, "frkill", barrier)
    live = live_disks(conn.lookupByName(frag_vm))
    if barrier == "libvirt":
        assert OVERLAY_MARK in live[0].source  # the VM is left running on the overlay
    else:
        from kvmkit.snapshot.drivers.file.overlay import qmp

        dom = conn.lookupByName(frag_vm)
        tops = [b["inserted"]["node-name"] for b in qmp(dom, "query-block") if "inserted" in b]
        assert any(t.startswith("kvmkit-ov-") for t in tops)  # QEMU writes to the overlay; libvirt does not know
        # a live migration now would start the destination on the base alone: QEMU must refuse it
        with pytest.raises(OperationFailed, match="does not support live migration"):
            qmp(dom, "migrate", {"uri": "exec:cat > /dev/null"})
        # libvirt's next boot already names the overlay, so a restart before `recover` keeps the newest writes
        assert OVERLAY_MARK in persistent_source(conn, frag_vm)
    rec = kvmkit(snap_env, "snapshot", "recover", "--json")
    assert rec.returncode == 0, rec.stderr
    assert single_images(conn, frag_vm)
    assert OVERLAY_MARK not in persistent_source(conn, frag_vm)
    if barrier == "qmp":
        from kvmkit.snapshot.drivers.file.overlay import NO_MIGRATION_NODE, qmp

        nodes = {n["node-name"] for n in qmp(conn.lookupByName(frag_vm), "query-named-block-nodes", {"flat": True})}
        assert NO_MIGRATION_NODE not in nodes and not any(n.startswith("kvmkit-ov-") for n in nodes), nodes
    assert agent.freeze_status(conn.lookupByName(frag_vm)) == "thawed"
    assert not list(Path(live[0].source).parent.glob("*@frkill.kvmkit"))
    assert kvmkit(snap_env, "snapshot", "list", frag_vm, "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("barrier", ["libvirt", "qmp"])
def test_the_watchdog_merges_the_overlays_back_when_kvmkit_dies_after_the_barrier(snap_env, conn, frag_vm, barrier):
    """Only kvmkit dies: its watchdog, on guard until the commit, runs the recover pass itself, so the VM does not
    sit on an overlay (migration refused) until someone runs another kvmkit command."""
    die_between_barrier_and_commit(snap_env, frag_vm, "frguard", barrier, watchdog_too=False)
    from kvmkit.snapshot.catalog import Catalog

    catalog = Catalog(Path(snap_env["KVMKIT_STATE_DIR"]) / "catalog.sqlite")
    deadline = time.monotonic() + 60
    while catalog.journal() or catalog.list(conn.lookupByName(frag_vm).UUIDString()):
        assert time.monotonic() < deadline, "the watchdog did not repair within 60 s"
        time.sleep(0.2)
    while watchdog_pids():  # it exits right after its recover pass
        assert time.monotonic() < deadline, "the watchdog did not exit"
        time.sleep(0.1)
    single_images(conn, frag_vm)
    assert OVERLAY_MARK not in persistent_source(conn, frag_vm)
    if barrier == "qmp":
        from kvmkit.snapshot.drivers.file.overlay import NO_MIGRATION_NODE, qmp

        nodes = {n["node-name"] for n in qmp(conn.lookupByName(frag_vm), "query-named-block-nodes", {"flat": True})}
        assert NO_MIGRATION_NODE not in nodes and not any(n.startswith("kvmkit-ov-") for n in nodes), nodes
    assert not list(single_images(conn, frag_vm)[0].parent.glob("*@frguard.kvmkit"))


def persistent_source(conn, vm: str) -> str:
    import libvirt

    from kvmkit.virt.disks import parse_disks

    return parse_disks(conn.lookupByName(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))[0].source


def test_qmp_crash_then_a_restart_by_someone_else_keeps_the_writes_made_after_the_barrier(snap_env, conn, frag_vm):
    """kvmkit dies between the QMP barrier and the commit; the guest writes on (into the overlay libvirt never saw);
    the VM is then killed and started again through libvirt before anyone runs `recover` (a host crash, an
    operator). The writes must survive that restart and the later `recover`."""
    die_between_barrier_and_commit(snap_env, frag_vm, "frboot")
    dom = conn.lookupByName(frag_vm)
    after = agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/late bs=64k count=16 2>/dev/null && sync && "
                                   "sha256sum /mnt/vda/late").split()[0]
    dom.destroy()  # QEMU gone, as in a host crash: only what reached the files counts
    dom.create()
    wait_for_agent(dom, None)
    assert agent.guest_shell(dom, "sha256sum /mnt/vda/late").split()[0] == after
    assert OVERLAY_MARK in live_disks(dom)[0].source  # libvirt booted the redirected definition
    rec = kvmkit(snap_env, "snapshot", "recover", "--json")
    assert rec.returncode == 0, rec.stderr
    assert "committed overlays" in rec.stdout
    single_images(conn, frag_vm)
    assert OVERLAY_MARK not in persistent_source(conn, frag_vm)
    assert agent.guest_shell(dom, "sha256sum /mnt/vda/late").split()[0] == after
    assert kvmkit(snap_env, "snapshot", "list", frag_vm, "--json").stdout.strip() == "[]"


@pytest.fixture(scope="module")
def ext4_vm(lab_state, snap_env, tmp_path_factory) -> str:
    """A VM whose disk sits on ext4 (no reflink): a loop-mounted ext4 image beside the test lab."""
    mnt = lab_state.dir.parent / f"{P}-ext4"
    image = lab_state.dir.parent / f"{P}-ext4.img"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    state = load(lab_state.dir)
    name = f"{P}-ext4"
    lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=128, start=False)
    old = Path(state.vm(name).disks[0].source)
    new = mnt / old.name
    subprocess.run(["cp", "--sparse=always", str(old), str(new)], check=True)  # shutil.move would fill the holes
    old.unlink()
    dom = conn_define(lab_state.uri, name, str(old), str(new))
    lab.start_vms(state, [name])
    yield name
    dom.destroy()
    lab.remove_vm(state, name)
    subprocess.run(["umount", str(mnt)], check=False)
    image.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mnt.rmdir()


def conn_define(uri: str, name: str, old: str, new: str):
    from kvmkit.virt.connection import open_connection

    conn = open_connection(uri)
    conn.defineXML(conn.lookupByName(name).XMLDesc(0).replace(old, new))
    return conn.lookupByName(name)


def test_no_reflink_is_refused_with_the_reason_and_nothing_changes(engine, ext4_vm, conn):
    with pytest.raises(EnvironmentProblem, match=r"cannot reflink .* or pass --allow-full-copy"):
        engine.create(ext4_vm, "nr1")
    disk = Path(live_disks(conn.lookupByName(ext4_vm))[0].source)
    assert sorted(p.name for p in disk.parent.iterdir() if p.name != "lost+found") == [disk.name]


def test_allow_full_copy_freezes_briefly_copies_after_and_leaves_no_overlay(snap_env, ext4_vm, conn):
    out = kvmkit(snap_env, "snapshot", "create", ext4_vm, "--name", "fc1", "--allow-full-copy", "--json")
    assert out.returncode == 0, out.stderr
    (snap,) = json.loads(out.stdout)["snapshots"]
    disk = snap["disks"][0]
    assert disk["method"] == "overlay" and disk["extents"] is None
    copy, source = Path(disk["snapshot"]), Path(disk["source"])
    assert copy.exists() and copy.stat().st_size == source.stat().st_size
    assert copy.stat().st_blocks < copy.stat().st_size // 512 // 2  # sparse: the holes stayed holes
    fsck = subprocess.run(["e2fsck", "-fn", str(copy)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout  # the copy taken after the thaw is a consistent filesystem
    single_images(conn, ext4_vm)
    engine = Engine.from_config()
    engine.delete(ext4_vm, "fc1")
    assert not copy.exists()


@pytest.fixture(scope="module")
def small_xfs_vm(lab_state, snap_env) -> tuple[str, Path]:
    """A VM whose disk sits on a tiny XFS (reflink) that the test can fill up."""
    mnt = lab_state.dir.parent / f"{P}-small-xfs"
    image = lab_state.dir.parent / f"{P}-small-xfs.img"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["truncate", "-s", "320M", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    mnt.chmod(0o755)
    state = load(lab_state.dir)
    name = f"{P}-small"
    lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=64, start=False)
    old = Path(state.vm(name).disks[0].source)
    new = mnt / old.name
    subprocess.run(["cp", "--sparse=always", str(old), str(new)], check=True)
    old.unlink()
    dom = conn_define(lab_state.uri, name, str(old), str(new))
    lab.start_vms(state, [name])
    yield name, mnt
    dom.destroy()
    lab.remove_vm(state, name)
    subprocess.run(["umount", str(mnt)], check=False)
    image.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mnt.rmdir()


def test_storage_full_thaws_cleans_up_and_keeps_earlier_snapshots(engine, conn, small_xfs_vm):
    from kvmkit.errors import OperationFailed

    vm, mnt = small_xfs_vm
    dom = conn.lookupByName(vm)
    engine.create(vm, "before-full")
    # the guest's writes first: on a full filesystem QEMU would pause the VM on its next allocating write
    agent.guest_shell(dom, "dd if=/dev/urandom of=/mnt/vda/x bs=64k count=64 2>/dev/null; sync")
    filler = mnt / "filler"
    fill(filler)
    try:
        with pytest.raises(OperationFailed, match=r"No space left on device.*guest thawed"):
            engine.create(vm, "when-full")
        assert agent.freeze_status(dom) == "thawed"
        names = [s.name for s in engine.catalog.list(dom.UUIDString())]
        assert names == ["before-full"]
        assert not list(mnt.glob("*@when-full.kvmkit"))
        assert Path(engine.catalog.get(dom.UUIDString(), "before-full").disks[0].handle).exists()
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(filler.with_suffix(".d"))], check=True)
    engine.delete(vm, "before-full")


def fill(folder_file: Path) -> None:
    """Fill the filesystem to the last block: one big file, then 4 KiB files until ENOSPC."""
    st = os.statvfs(folder_file.parent)
    subprocess.run(["fallocate", "-l", str(max(0, st.f_bavail * st.f_frsize - (8 << 20))), str(folder_file)],
                   check=True)
    folder = folder_file.with_suffix(".d")
    folder.mkdir()
    for i in range(100_000):
        try:
            (folder / str(i)).write_bytes(b"x" * 4096)
        except OSError:
            return


def test_fragment_bench_measures_every_variant_in_one_run_and_leaves_nothing(lab_state, snap_env):
    """The benchmark itself, small: a few thousand extents (past the default limit of 2048), one round."""
    from kvmkit.benchmarks import snapshot_fragment as bench_fragment

    r = bench_fragment.run(lab_state.dir, lab_state.uri, extents=3000, disk_gib=1, rounds=1)
    assert r.extents_after >= 3000 > r.extents_before
    assert 0 < r.unfragmented_freeze_ms < 10_000 and 0 < r.barrier_freeze_ms < 10_000
    assert 0 < r.barrier_commit_ms < r.barrier_after_thaw_ms < r.barrier_total_ms
    assert r.libvirt_barrier_freeze_ms > 0 and r.libvirt_ms > 0 and r.reflink_alone_ms > 0
    assert r.barrier_vs_unfragmented == round(r.barrier_freeze_ms / r.unfragmented_freeze_ms, 2)
    state = load(lab_state.dir)
    assert all(state.vm(f"{lab_state.dir.name}-bench-{kind}") is None for kind in ("frag", "fresh"))
    assert not list(lab_state.dir.glob("pool/*bench-f*"))
