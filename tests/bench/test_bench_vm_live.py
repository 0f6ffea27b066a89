"""The same fio suite inside a lab VM, through the guest agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from kvmkit.lab import lab
from kvmkit.lab.state import load
from tests.conftest import lab_vm

pytestmark = pytest.mark.lab
FIO_VM = {"file_disks": 1, "rbd_disks": 0, "size_mib": 256, "with_fio": True, "memory_mib": lab.FIO_GUEST_MIB}


@pytest.fixture(scope="module")
def fio_vm(lab_state) -> str:
    return lab_vm(lab_state, "tlab-fio", **FIO_VM)


def test_quick_suite_runs_fio_in_the_guest(lab_state, fio_vm):
    env = {**os.environ, "KVMKIT_LAB_DIR": str(lab_state.dir)}
    out = subprocess.run([sys.executable, "-m", "kvmkit", "bench", "run", "--suite", "quick", "--vm", fio_vm,
                          "--target", "/mnt/vda/fio.dat", "--size", "32M", "--runtime", "1", "--ramp", "0", "--json"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert run["status"] == "ok"
    measured = [j for j in run["jobs"] if j.get("phase") == "measure"]
    assert len(measured) >= 7
    assert all(sum((j[d] or {}).get("iops", 0) for d in ("read", "write")) > 0 for j in measured)
    assert "vm:tlab-fio" in out.stdout  # the machine/runner recorded is the guest, not the host


def test_paths_compares_virtio_blk_and_vhost_user_blk_on_one_file(lab_state):
    from kvmkit.benchmarks import paths

    result = paths.run(lab_state.dir, lab_state.uri, size_mib=32, runtime_s=1,
                       only=["host", "virtio-blk native", "vhost-user-blk"], stall_retries=2)  # TCG: docs/bench.md
    assert [r.path for r in result.rows] == ["host", "virtio-blk native", "vhost-user-blk (qemu-storage-daemon)"]
    assert all(r.status == "ok" and r.randread_4k_qd32_iops > 0 for r in result.rows), result.rows
    assert result.rows[0].vs_host_randread == 1.0
    assert all(r.vs_host_randread > 0 for r in result.rows[1:])
    assert "TCG" in result.note
    assert result.seconds > 0 and 10 < result.peak_rss_mib < 2048
    assert not (lab_state.pool.path / "bench-paths.raw").exists()


def test_two_vms_at_once_add_up_per_job(lab_state, fio_vm):
    lab_vm(lab_state, "tlab-fio2", **FIO_VM)
    env = {**os.environ, "KVMKIT_LAB_DIR": str(lab_state.dir)}
    out = subprocess.run([sys.executable, "-m", "kvmkit", "bench", "run", "--suite", "quick", "--vm", fio_vm,
                          "--vm", "tlab-fio2", "--target", "/mnt/vda/multi.dat", "--size", "32M", "--runtime", "1",
                          "--ramp", "0", "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["vms"] == [fio_vm, "tlab-fio2"]
    by_name = {j["name"]: j for j in result["jobs"]}
    for run in result["runs"]:
        for job in (j for j in run["jobs"] if j["phase"] == "measure"):
            assert by_name[job["name"]]["vms"] == 2
    first = result["jobs"][0]
    per_vm = [sum((j[d] or {}).get("iops", 0) for d in ("read", "write")) for r in result["runs"]
              for j in r["jobs"] if j["name"] == first["name"] and j["phase"] == "measure"]
    assert first["total_iops"] == pytest.approx(sum(per_vm), rel=1e-3)


def test_a_vm_that_disappears_mid_run_marks_the_run_failed_and_keeps_what_was_measured(lab_state):
    from kvmkit.bench.command_runner import CommandRunner
    from kvmkit.bench.engine import BenchOptions, run_suite
    from kvmkit.virt import agent
    from kvmkit.virt.connection import connection

    state = load(lab_state.dir)
    name = "tlab-fio-gone"
    lab.add_vm(state, name, file_disks=1, rbd_disks=0, size_mib=128, with_fio=True, memory_mib=lab.FIO_GUEST_MIB)
    fio_runs = 0
    try:
        with connection(lab_state.uri) as conn:
            dom = conn.lookupByName(name)

            def exec_fn(argv, timeout_s):
                nonlocal fio_runs
                if argv[0] == "fio" and "--output-format=json" in argv:
                    fio_runs += 1
                    if fio_runs == 1:  # the VM goes away 3 s into the suite's fio run
                        threading.Timer(3.0, dom.destroy).start()
                return agent.guest_exec(dom, argv, timeout_s=timeout_s)

            run = run_suite("quick", "/mnt/vda/gone.dat", CommandRunner(f"vm:{name}", exec_fn),
                            BenchOptions(size_bytes=16 << 20, runtime_s=1, ramp_s=0, label="gone"))
        assert fio_runs == 1
        assert run.status == "failed" and name in run.error
        assert run.machine.hostname and run.fio_version  # what was learnt before is kept in the record
        assert json.loads(run.to_json())["status"] == "failed"
        assert run.label == "gone"
    finally:
        lab.remove_vm(state, name)
