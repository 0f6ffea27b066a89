"""Consistency groups on the lab: two running VMs, each with a file disk (XFS reflink) and an RBD disk, snapshotted
as one instant — real guest-agent freezes, real reflinks, real librbd, real kill -9 — and a ground truth: a counter
the host hands out is logged in both guests, and after a revert of the group the two logs stop at one instant."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import datetime

import pytest
import rados
import rbd

from kvmkit import config
from kvmkit.errors import Conflict, KvmkitError
from kvmkit.snapshot.context import SnapshotContext
from kvmkit.snapshot.group import create_group
from kvmkit.snapshot.group_ops import revert_group
from kvmkit.snapshot.model import Mode, State
from kvmkit.virt import agent
from kvmkit.virt.connection import connection
from tests.conftest import TEST_LAB_DIR, lab_vm
from tests.snapshot.conftest import backup_env, disk_paths, kvmkit, wait_thawed

P = TEST_LAB_DIR.name  # every VM and file of these tests starts with the lab folder's name

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def pair(lab_state, snap_env) -> list[str]:
    """Two running VMs, each with a file disk (vda) and an RBD disk (vdb)."""
    return [lab_vm(lab_state, f"{P}-g{x}", file_disks=1, rbd_disks=1, size_mib=64) for x in "ab"]


@pytest.fixture(scope="module")
def rbd_pair(lab_state, snap_env) -> list[str]:
    """Two running VMs whose only disk is an RBD image in the lab pool: one rbd.Group can span them."""
    return [lab_vm(lab_state, f"{P}-gr{x}", file_disks=0, rbd_disks=1, size_mib=64) for x in "ab"]


@pytest.fixture()
def ctx(snap_env) -> SnapshotContext:
    return SnapshotContext.from_settings(config.load(), "qemu:///system")


@pytest.fixture()
def ioctx(lab_state):
    cluster = rados.Rados(conffile=str(lab_state.ceph.conf))
    cluster.connect(timeout=10)
    io = cluster.open_ioctx("rbd")
    yield io
    io.close()
    cluster.shutdown()


def rbd_snaps(ioctx, image: str) -> list[str]:
    with rbd.Image(ioctx, image, read_only=True) as img:
        return [s["name"] for s in img.list_snaps()]


def group_snaps(ioctx, group: str) -> list[str]:
    try:
        return [s["name"] for s in rbd.Group(ioctx, group).list_snaps()]
    except rbd.ObjectNotFound:
        return []


def test_quiesced_group_over_file_and_rbd_disks_freezes_every_vm_in_one_overlapping_window(snap_env, conn, pair,
                                                                                           ioctx):
    out = kvmkit(snap_env, "snapshot", "create", "--group", "app", *pair, "--name", "q1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["group"] == "app" and doc["errors"] == []
    snaps = doc["snapshots"]
    assert sorted(s["vm"] for s in snaps) == sorted(pair)
    began = [datetime.fromisoformat(s["freeze_began"]) for s in snaps]
    ended = [datetime.fromisoformat(s["thaw_ended"]) for s in snaps]
    assert all(len(s["freeze_began"].split(".")[1]) >= 6 for s in snaps)  # microseconds, always printed
    assert max(began) < min(ended), "some VM thawed before another froze: not one instant"
    for s in snaps:
        assert s["mode"] == "quiesced" and s["state"] == "ready" and s["group"] == "app"
        assert {d["driver"] for d in s["disks"]} == {"file", "rbd"}
    for vm in pair:
        assert [p for p in disk_paths(conn, vm)[0].parent.glob(f"{vm}-vda.raw@q1.kvmkit")]
        assert "kvmkit-q1" in rbd_snaps(ioctx, f"{vm}-vdb")
        assert agent.freeze_status(conn.lookupByName(vm)) == "thawed"
    listed = json.loads(kvmkit(snap_env, "snapshot", "list", "--group", "app", "--json").stdout)
    assert sorted(s["vm"] for s in listed) == sorted(pair)
    alone = kvmkit(snap_env, "snapshot", "delete", pair[0], "q1")
    assert alone.returncode == Conflict.exit_code and "part of group app" in alone.stderr
    gone = kvmkit(snap_env, "snapshot", "delete", "--group", "app", "q1", "--yes")
    assert gone.returncode == 0, gone.stderr
    for vm in pair:
        assert not list(disk_paths(conn, vm)[0].parent.glob(f"{vm}-vda.raw@q1.kvmkit"))
        assert "kvmkit-q1" not in rbd_snaps(ioctx, f"{vm}-vdb")


def test_the_stored_group_is_reused_by_name(snap_env, pair):
    assert kvmkit(snap_env, "snapshot", "create", "--group", "app", *pair, "--name", "d1").returncode == 0
    again = kvmkit(snap_env, "snapshot", "create", "--group", "app", "--name", "d2", "--json")
    assert again.returncode == 0, again.stderr
    assert sorted(s["vm"] for s in json.loads(again.stdout)["snapshots"]) == sorted(pair)
    for name in ("d1", "d2"):
        assert kvmkit(snap_env, "snapshot", "delete", "--group", "app", name, "--yes").returncode == 0


def test_a_group_backed_up_gives_every_member_a_backup_of_the_one_instant(snap_env, pair, lab_state, tmp_path):
    """`create --group --backup`: one group snapshot, then each member's backup under its name (file disk and RBD
    disk alike); each verifies, and the group's snapshots are deleted as one afterwards."""
    env = backup_env(snap_env, tmp_path, f'state_dir = "{snap_env["KVMKIT_STATE_DIR"]}"\nlab_dir = "{lab_state.dir}"\n')
    out = kvmkit(env, "snapshot", "create", "--group", "appb", *pair, "--name", "gb1", "--backup", "--json",
                 timeout=600)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["group"] == "appb" and made["errors"] == []
    assert sorted((s["vm"], s["name"], s["backup"]["target"]) for s in made["snapshots"]) == sorted(
        (vm, "gb1", "sec") for vm in pair)
    for vm in pair:
        listed = kvmkit(env, "backup", "list", vm, "--json")
        assert listed.returncode == 0, listed.stderr
        assert [b["snapshot"] for b in json.loads(listed.stdout)] == ["gb1"]
        assert kvmkit(env, "backup", "verify", vm, "gb1", timeout=600).returncode == 0
    assert kvmkit(env, "snapshot", "delete", "--group", "appb", "gb1", "--yes").returncode == 0


def test_crash_consistent_mixed_storage_pauses_every_vm_in_one_window(ctx, conn, pair):
    snaps = create_group(ctx, "mixed", pair, "c1", crash_consistent=True)
    assert all(s.mode is Mode.CRASH and s.pause_ms is not None for s in snaps)
    assert max(s.freeze_began for s in snaps) < min(s.thaw_ended for s in snaps)
    assert all(conn.lookupByName(vm).info()[0] == 1 for vm in pair)  # running again, not paused
    from kvmkit.snapshot.group_ops import delete_group

    delete_group(ctx, "mixed", "c1")


def test_crash_consistent_rbd_group_is_one_rbd_group_snapshot_with_no_freeze_or_pause(ctx, conn, rbd_pair, ioctx):
    from kvmkit.snapshot.create import create
    from kvmkit.snapshot.lifecycle import delete

    solo = create(ctx, rbd_pair[0], "solo1", crash_consistent=True)  # its image joins the VM's own RBD group
    assert solo.mode is Mode.GROUP
    delete(ctx, rbd_pair[0], "solo1")  # that group now holds no snapshot: the image may move to the app's group
    snaps = create_group(ctx, "rbdapp", rbd_pair, "rg1", crash_consistent=True)
    assert all(s.mode is Mode.GROUP and s.freeze_ms == 0.0 and s.freeze_began is None for s in snaps)
    assert {d.group for s in snaps for d in s.disks} == {"rbd/kvmkit-g-rbdapp"}
    assert "kvmkit-rg1" in group_snaps(ioctx, "kvmkit-g-rbdapp")
    members = {i["name"] for i in rbd.Group(ioctx, "kvmkit-g-rbdapp").list_images()}
    assert members == {f"{vm}-vda" for vm in rbd_pair}  # one group spanning both VMs' images
    from kvmkit.snapshot.group_ops import delete_group

    with pytest.raises(Conflict, match="already in group"):  # the other way: the app's group still has one
        create(ctx, rbd_pair[0], "solo2", crash_consistent=True)
    delete_group(ctx, "rbdapp", "rg1")
    assert "kvmkit-rg1" not in group_snaps(ioctx, "kvmkit-g-rbdapp")


def test_a_vm_whose_freeze_fails_fails_the_group_and_nothing_is_kept(snap_env, conn, pair, noagent_vm, ioctx):
    out = kvmkit(snap_env, "snapshot", "create", "--group", "withbad", pair[0], noagent_vm, "--name", "bad1")
    assert out.returncode != 0 and "no guest agent answers" in out.stderr
    assert agent.freeze_status(conn.lookupByName(pair[0])) == "thawed"
    assert not list(disk_paths(conn, pair[0])[0].parent.glob("*@bad1.kvmkit"))
    assert "kvmkit-bad1" not in rbd_snaps(ioctx, f"{pair[0]}-vdb")


@pytest.mark.parametrize("step", ["after-lock", "after-intent", "after-freeze", "mid-snapshot", "after-thaw"])
def test_kill_9_of_a_group_at_every_step_thaws_every_guest_and_recover_leaves_nothing(snap_env, conn, pair,
                                                                                       ioctx, step):
    name = f"gkill-{step}"
    out = kvmkit({**snap_env, "KVMKIT_FAILPOINT": step}, "snapshot", "create", "--group", "app", *pair,
                 "--name", name)
    assert out.returncode == -signal.SIGKILL, out.stderr
    for vm in pair:
        wait_thawed(conn.lookupByName(vm), 10)
    rec = kvmkit(snap_env, "snapshot", "recover", "--json")
    assert rec.returncode == 0, rec.stderr
    listed = json.loads(kvmkit(snap_env, "snapshot", "list", "--json").stdout)
    assert [s for s in listed if s["name"] == name] == []
    for vm in pair:
        assert not list(disk_paths(conn, vm)[0].parent.glob(f"*@{name}.kvmkit"))
        assert f"kvmkit-{name}" not in rbd_snaps(ioctx, f"{vm}-vdb")
    wait_stale_watches_gone(ioctx, [f"{vm}-vdb" for vm in pair])


def wait_stale_watches_gone(ioctx, images: list[str], within_s: float = 90) -> None:
    """The killed kvmkit had the RBD images open: Ceph keeps its watches until they time out (30 s by default),
    and until then every snapshot's header notification waits for the dead watcher — long enough to outlast a
    freeze deadline. The next test starts once only the VM's own watch (QEMU's) is left."""
    deadline = time.monotonic() + within_s
    for image in images:
        while True:
            with rbd.Image(ioctx, image, read_only=True) as img:
                if len(list(img.watchers_list())) <= 1:
                    break
            assert time.monotonic() < deadline, f"stale watches on {image} outlived {within_s:g} s"
            time.sleep(1)


class CounterWriters:
    """The host hands out one counter, k = 1, 2, …; for each k it has VM A append k to a log on its file disk,
    then VM B append k to a log on its RBD disk, each through the guest agent (retried while a guest is frozen).
    So at any instant A's last value is B's or one more: a snapshot of both at one instant keeps that."""

    def __init__(self, uri: str, vms: list[str]) -> None:
        self.uri, self.vms, self.k = uri, vms, 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with connection(self.uri) as conn:
                doms = [conn.lookupByName(vm) for vm in self.vms]
                while not self.stop.is_set():
                    k = self.k + 1
                    for dom, path in zip(doms, ("/mnt/vda/counter", "/mnt/vdb/counter"), strict=True):
                        while True:
                            try:
                                agent.guest_shell(dom, f"echo {k} >> {path}", timeout_s=30)
                                break
                            except KvmkitError:  # frozen right now: the same k again once it thaws
                                time.sleep(0.02)
                    self.k = k
        except BaseException as exc:
            self.error = exc

    def wait_for(self, k: int, within_s: float = 120) -> None:
        deadline = time.monotonic() + within_s
        while self.k < k:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"the writers reached only {self.k}"
            time.sleep(0.05)


def last_value(dom, path: str) -> int:
    return int(agent.guest_shell(dom, f"tail -n 1 {path}").strip())


def test_ground_truth_after_a_group_revert_both_logs_stop_at_one_instant(ctx, conn, lab_state, pair):
    for vm, path in zip(pair, ("/mnt/vda/counter", "/mnt/vdb/counter"), strict=True):
        agent.guest_shell(conn.lookupByName(vm), f"rm -f {path} && sync")
    writers = CounterWriters(lab_state.uri, pair)
    writers.thread.start()
    try:
        writers.wait_for(5)
        snaps = create_group(ctx, "truth", pair, "t1")
        at_snapshot = writers.k
        writers.wait_for(at_snapshot + 5)
    finally:
        writers.stop.set()
        writers.thread.join(120)
    assert writers.error is None, writers.error
    doms = [conn.lookupByName(vm) for vm in pair]
    later_a = last_value(doms[0], "/mnt/vda/counter")
    assert all(s.state is State.READY for s in snaps)
    revert_group(ctx, "truth", "t1", force_stop=True)
    doms = [conn.lookupByName(vm) for vm in pair]
    a = last_value(doms[0], "/mnt/vda/counter")
    b = last_value(doms[1], "/mnt/vdb/counter")
    assert 5 <= a < later_a, (a, later_a)  # the revert went back to the snapshot, after some writes
    assert a - b in (0, 1), f"A logged {a}, B logged {b}: not one instant"
    from kvmkit.snapshot.group_ops import delete_group
    from kvmkit.snapshot.lifecycle import flatten

    for vm in pair:  # the revert made each RBD disk a clone of its snapshot: give it its own data first
        flatten(ctx, vm)
    delete_group(ctx, "truth", "t1")
