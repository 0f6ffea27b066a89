"""The lab for real: a TCG VM with qemu-guest-agent, an XFS reflink pool, a one-node Ceph."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.lab import lab
from kvmkit.lab.state import load
from kvmkit.virt import agent
from tests.unprivileged import python_for_nobody

pytestmark = pytest.mark.lab

FICLONE = 0x40049409


def test_vm_freezes_and_thaws_through_the_agent(lab_state, conn):
    dom = conn.lookupByName(lab_state.vms[0].name)
    t0 = time.perf_counter()
    frozen = agent.freeze(dom)
    try:
        assert frozen >= 1
        assert agent.freeze_status(dom) == "frozen"
    finally:
        agent.thaw(dom)
    assert agent.freeze_status(dom) == "thawed"
    print(f"freeze + thaw round trip: {time.perf_counter() - t0:.2f} s")


def test_guest_exec_writes_a_file_whose_checksum_the_host_predicts(lab_state, conn):
    dom = conn.lookupByName(lab_state.vms[0].name)
    pattern = b"kvmkit\n" * (1 << 17)  # what busybox `yes kvmkit | head -c N` produces
    script = f"yes kvmkit | head -c {len(pattern)} > /mnt/vda/pattern && sync && sha256sum /mnt/vda/pattern"
    out = agent.guest_shell(dom, script)
    assert out.split()[0] == hashlib.sha256(pattern).hexdigest()


def test_guest_exec_reports_a_failing_command(lab_state, conn):
    dom = conn.lookupByName(lab_state.vms[0].name)
    result = agent.guest_exec(dom, ["/bin/sh", "-c", "echo oops >&2; exit 3"])
    assert result.exit_code == 3
    assert result.stderr.strip() == b"oops"


def test_pool_is_xfs_with_working_reflink(lab_state):
    assert lab_state.pool.kind == "xfs", lab_state.pool.reason
    src = lab_state.pool.path / "reflink-src"
    dst = lab_state.pool.path / "reflink-dst"
    src.write_bytes(os.urandom(1 << 20))
    try:
        with src.open("rb") as s, dst.open("wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        assert dst.read_bytes() == src.read_bytes()
    finally:
        src.unlink()
        dst.unlink(missing_ok=True)


def test_rbd_image_create_snapshot_remove_on_lab_ceph(lab_state):
    import rados
    import rbd

    cluster = rados.Rados(conffile=str(lab_state.ceph.conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(lab_state.ceph.pool) as ioctx:
            rbd.RBD().create(ioctx, "pytest-img", 64 << 20)
            with rbd.Image(ioctx, "pytest-img") as img:
                img.write(b"x" * 4096, 0)
                img.create_snap("s1")
                img.write(b"y" * 4096, 0)
                assert [s["name"] for s in img.list_snaps()] == ["s1"]
                img.set_snap("s1")
                assert img.read(0, 4096) == b"x" * 4096
                img.set_snap(None)
                img.remove_snap("s1")
            rbd.RBD().remove(ioctx, "pytest-img")
            assert "pytest-img" not in rbd.RBD().list(ioctx)
    finally:
        cluster.shutdown()


def test_status_json_reports_vms_disks_agent_and_ceph(lab_state):
    env = {**os.environ, "KVMKIT_LAB_DIR": str(lab_state.dir)}
    out = subprocess.run([sys.executable, "-m", "kvmkit", "lab", "status", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    status = json.loads(out)
    vm = next(v for v in status["vms"] if v["name"] == lab_state.vms[0].name)
    assert vm["state"] == "running" and vm["agent_ready"] is True
    assert [(d["disk"], d["driver"]) for d in vm["disks"]] == [("vda", "file"), ("vdb", "rbd")]
    assert Path(vm["disks"][0]["source"]).exists()
    assert status["ceph"]["health"] == "HEALTH_OK"
    assert status["ceph"]["pool"] == "rbd"


def test_up_twice_is_safe_and_keeps_the_running_vm(lab_state, conn):
    from kvmkit.lab.state import load

    dom = conn.lookupByName(lab_state.vms[0].name)
    before = dom.ID()
    names_before = [vm.name for vm in load(lab_state.dir).vms]  # other tests add VMs of their own
    state = lab.up(lab_state.dir, lab_state.uri, vms=1, disks_per_vm=2, with_ceph=True, storage="mixed",
                   disk_size_mib=256)
    assert [vm.name for vm in state.vms] == names_before and lab_state.vms[0].name in names_before
    assert conn.lookupByName(lab_state.vms[0].name).ID() == before  # not restarted
    assert state.ceph.mon_pid == lab_state.ceph.mon_pid


def test_state_file_is_private(lab_state):
    assert (lab_state.dir / "state.json").stat().st_mode & 0o777 == 0o600


def test_a_vm_whose_agent_never_answers_fails_with_the_console_tail(lab_state, conn):
    from kvmkit.errors import OperationFailed
    from kvmkit.lab.state import load

    state = load(lab_state.dir)
    lab.add_vm(state, "tlab-noagent", file_disks=0, rbd_disks=0, start=False)
    try:
        dom = conn.lookupByName("tlab-noagent")
        xml = dom.XMLDesc(0).replace("console=ttyS0", "console=ttyS0 rdinit=/bin/false")  # no init: no agent
        conn.defineXML(xml)
        dom.create()
        with pytest.raises(OperationFailed, match="did not answer within 3 s; console: "):
            lab.wait_for_agent(dom, state.vm("tlab-noagent"), timeout_s=3)
    finally:
        lab.remove_vm(state, "tlab-noagent")
    assert state.vm("tlab-noagent") is None


def test_lab_up_without_root_is_one_clear_line_and_starts_nothing(lab_state, tmp_path):
    with python_for_nobody("kvmkit.cli", "kvmkit.lab.cli") as (python, nobody_env):
        env = {**nobody_env, "KVMKIT_LAB_DIR": str(tmp_path / "nolab"), "KVMKIT_STATE_DIR": str(tmp_path)}
        out = subprocess.run([*python, "-m", "kvmkit", "lab", "up", "--ceph"], env=env, capture_output=True,
                             text=True)
    assert out.returncode == 5
    assert out.stderr == "kvmkit: error: the lab needs root (it starts libvirtd, mounts a loop device and runs Ceph)\n"
    assert not (tmp_path / "nolab").exists()
    started = subprocess.run(["pgrep", "-f", str(tmp_path / "nolab")], capture_output=True, text=True).stdout
    assert started == ""  # no daemon of that lab


def test_a_taken_mon_port_is_skipped_not_fought_over():
    import socket

    from kvmkit.lab import procs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert not procs.port_free(taken)
        assert procs.free_port(taken, taken + 50) != taken
        from kvmkit.errors import EnvironmentProblem

        with pytest.raises(EnvironmentProblem, match=f"no free TCP port on 127.0.0.1 in {taken}-{taken}"):
            procs.free_port(taken, taken + 1)


def test_scratch_vm_and_storage_daemon_left_by_a_killed_bench_are_stopped(lab_state, conn):
    """What `lab down` runs before unmounting the pool: a transient VM and a qemu-storage-daemon that a killed
    `bench paths` left behind would otherwise keep the pool busy."""
    from kvmkit.benchmarks import paths
    from kvmkit.lab import scratch
    from kvmkit.lab.procs import alive

    state = load(lab_state.dir)
    backing = state.pool.path / "scratch-test.raw"
    backing.write_bytes(b"\0" * (8 << 20))
    try:
        first = scratch.start_storage_daemon(state, backing)
        pidfile = state.dir / "paths-qsd.pid"
        assert pidfile.stat().st_mode & 0o777 == 0o600
        second = scratch.start_storage_daemon(state, backing)  # a stale daemon is replaced, not doubled
        assert not alive(first) and alive(second)
        variant = next(v for v in paths.VARIANTS if v.kind == "vhost-user-blk")
        conn.createXML(paths._domain_xml(state, scratch.vm_name(state), variant, backing,
                                         scratch.socket_path(state)), 0)
        assert scratch.stop(state, libvirt_up=True) == [f"{scratch.vm_name(state)} (scratch VM)",
                                                        "qemu-storage-daemon"]
        assert not alive(second) and not pidfile.exists() and not scratch.socket_path(state).exists()
        assert scratch.vm_name(state) not in [d.name() for d in conn.listAllDomains()]
        assert scratch.stop(state, libvirt_up=True) == []  # nothing left: nothing to say
    finally:
        scratch.stop(state, libvirt_up=True)
        backing.unlink(missing_ok=True)
