"""Snapshots of real running VMs: real qemu-guest-agent freezes, real XFS reflinks, real kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from kvmkit.errors import Conflict, EnvironmentProblem, InvalidInput, NotFound
from kvmkit.lab import lab
from kvmkit.lab.state import load
from kvmkit.snapshot.guard import vm_lock
from kvmkit.snapshot.model import Mode, State
from kvmkit.virt import agent
from tests.conftest import TEST_LAB_DIR
from tests.snapshot.conftest import backup_env, disk_paths, kvmkit, wait_thawed

P = TEST_LAB_DIR.name  # every VM and file of these tests starts with the lab folder's name

pytestmark = pytest.mark.lab


def write_random(dom, path: str, mib: int = 1) -> str:
    out = agent.guest_shell(dom, f"dd if=/dev/urandom of={path} bs=64k count={16 * mib} 2>/dev/null && sync "
                                 f"&& sha256sum {path}")
    return out.split()[0]


def checksum(dom, path: str) -> str:
    return agent.guest_shell(dom, f"sha256sum {path}").split()[0]


def test_revert_restores_pre_snapshot_checksum_and_fsck_passes(engine, conn, file_vm, lab_state):
    dom = conn.lookupByName(file_vm)
    before_a = write_random(dom, "/mnt/vda/data")
    before_b = write_random(dom, "/mnt/vdb/data")
    snap = engine.create(file_vm, "rev1")
    assert snap.state is State.READY and snap.mode is Mode.QUIESCED
    assert 0 < snap.freeze_ms < 10_000
    assert {d.target for d in snap.disks} == {"vda", "vdb"}
    assert write_random(dom, "/mnt/vda/data") != before_a
    write_random(dom, "/mnt/vdb/data")

    with pytest.raises(Conflict, match="is running; shut it down first or pass --force-stop"):
        engine.revert(file_vm, "rev1")
    dom.destroy()
    engine.revert(file_vm, "rev1")
    for path in disk_paths(conn, file_vm):
        fsck = subprocess.run(["e2fsck", "-fn", str(path)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert not list(path.parent.glob(path.name + ".kvmkit-*")), "revert left its staging files"
    lab.start_vms(load(lab_state.dir), [file_vm])
    dom = conn.lookupByName(file_vm)
    assert checksum(dom, "/mnt/vda/data") == before_a
    assert checksum(dom, "/mnt/vdb/data") == before_b
    engine.delete(file_vm, "rev1")


def test_force_stop_revert_stops_reverts_and_starts_the_vm(engine, conn, file_vm, lab_state):
    dom = conn.lookupByName(file_vm)
    before = write_random(dom, "/mnt/vda/force")
    engine.create(file_vm, "force1")
    agent.guest_shell(dom, "rm /mnt/vda/force && sync")
    engine.revert(file_vm, "force1", force_stop=True)
    assert dom.isActive()
    lab.wait_for_agent(dom, None)
    assert checksum(dom, "/mnt/vda/force") == before
    engine.delete(file_vm, "force1")


def test_snapshot_files_are_reflinks_beside_the_disk_and_delete_removes_them(engine, conn, file_vm):
    snap = engine.create(file_vm, "files1")
    for disk in snap.disks:
        assert disk.handle == f"{disk.source}@files1.kvmkit"
    handles = [d.handle for d in snap.disks]
    engine.delete(file_vm, "files1")
    assert not any(__import__("os").path.exists(h) for h in handles)
    with pytest.raises(NotFound):
        engine.delete(file_vm, "files1")


def test_create_json_has_the_documented_fields(snap_env, file_vm):
    out = kvmkit(snap_env, "snapshot", "create", file_vm, "--name", "json1", "--json")
    assert out.returncode == 0, out.stderr
    envelope = json.loads(out.stdout)
    assert envelope["errors"] == [] and len(envelope["snapshots"]) == 1  # the same shape as for several VMs
    data = envelope["snapshots"][0]
    assert {"vm", "name", "mode", "state", "freeze_ms", "disks"} <= data.keys()
    assert data["vm"] == file_vm and data["name"] == "json1" and data["state"] == "ready"
    assert all({"disk", "driver", "snapshot"} <= d.keys() and "target" not in d for d in data["disks"])
    assert datetime.fromisoformat(data["created"]).tzinfo is not None
    listed = json.loads(kvmkit(snap_env, "snapshot", "list", file_vm, "--json").stdout)
    assert "json1" in [s["name"] for s in listed]
    deleted = kvmkit(snap_env, "snapshot", "delete", file_vm, "json1", "--json", "--yes")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["state"] == "deleted"
    # each operation wrote its own job log, vzdump style: its records and its outcome
    from kvmkit import joblog

    state_dir = Path(snap_env["KVMKIT_STATE_DIR"])
    (create_log,) = joblog.recent(state_dir, "snapshot", file_vm)
    text = create_log.read_text()
    print(f"\n$ cat {create_log}\n{text}")
    assert "job snapshot: snapshot create json1" in text and "snapshot created" in text and "freeze_ms=" in text
    assert text.rstrip().endswith(f"job ok vm={file_vm}")
    (delete_log,) = joblog.recent(state_dir, "delete", file_vm)
    assert delete_log.read_text().rstrip().endswith(f"job ok vm={file_vm}")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["create", f"{P}-file", "--name", ".hidden"], 2, "invalid snapshot name '.hidden'"),
    (["create", f"{P}-file", "--name", "a/b"], 2, "invalid snapshot name"),
    (["create", f"{P}-file", "--name", "x" * 65], 2, "use 1-64 of"),
    (["create", "no such vm"], 2, "invalid VM name"),
    (["create", f"{P}-nonexistent"], 3, f"no VM named '{P}-nonexistent'"),
    (["delete", f"{P}-file", "never-made"], 3, "has no snapshot named 'never-made'"),
    (["revert", f"{P}-file", "never-made"], 3, "has no snapshot named 'never-made'"),
])
def test_bad_input_is_one_line_and_changes_nothing(snap_env, conn, file_vm, args, code, message):
    before = sorted(p.name for p in disk_paths(conn, file_vm)[0].parent.iterdir())
    out = kvmkit(snap_env, "snapshot", *args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert sorted(p.name for p in disk_paths(conn, file_vm)[0].parent.iterdir()) == before


def test_duplicate_name_is_refused(engine, file_vm):
    engine.create(file_vm, "dup1")
    with pytest.raises(Conflict, match="already has a snapshot named 'dup1'"):
        engine.create(file_vm, "dup1")
    engine.delete(file_vm, "dup1")


def test_no_agent_without_crash_consistent_is_refused_and_changes_nothing(engine, conn, noagent_vm):
    with pytest.raises(EnvironmentProblem, match=r"no guest agent answers.*install qemu-guest-agent"):
        engine.create(noagent_vm, "na1")
    assert engine.catalog.list(conn.lookupByName(noagent_vm).UUIDString()) == []
    assert not list(disk_paths(conn, noagent_vm)[0].parent.glob("*@na1.kvmkit"))


def test_crash_consistent_pauses_instead_of_freezing(engine, conn, noagent_vm):
    snap = engine.create(noagent_vm, "crash1", crash_consistent=True)
    assert snap.mode is Mode.CRASH and snap.freeze_ms is None and 0 < snap.pause_ms < 10_000
    assert conn.lookupByName(noagent_vm).state()[0] == 1  # running again
    engine.delete(noagent_vm, "crash1")


def test_concurrent_create_on_one_vm_fails_clearly_or_waits(engine, snap_env, conn, file_vm):
    vm_uuid = conn.lookupByName(file_vm).UUIDString()
    with vm_lock(engine.state_dir, vm_uuid, file_vm):
        out = kvmkit(snap_env, "snapshot", "create", file_vm, "--name", "conc1")
        assert out.returncode == 4 and "is busy" in out.stderr
        waiter = subprocess.Popen([sys.executable, "-m", "kvmkit", "snapshot", "create", file_vm, "--name", "conc2",
                                   "--wait", "30"], env=snap_env, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting for our lock: no second freeze meanwhile
        assert agent.freeze_status(conn.lookupByName(file_vm)) == "thawed"
    assert waiter.wait(60) == 0, waiter.stderr.read()
    assert [s.name for s in engine.catalog.list(vm_uuid)] == ["conc2"]
    engine.delete(file_vm, "conc2")


@pytest.mark.parametrize("step", ["after-lock", "after-intent", "after-freeze", "mid-snapshot", "after-thaw"])
def test_kill_9_at_every_step_leaves_guest_thawed_and_recover_leaves_nothing(snap_env, conn, file_vm, engine, step):
    dom = conn.lookupByName(file_vm)
    name = f"kill-{step}"
    out = kvmkit({**snap_env, "KVMKIT_FAILPOINT": step}, "snapshot", "create", file_vm, "--name", name)
    assert out.returncode == -signal.SIGKILL
    wait_thawed(dom, 10)
    rec = kvmkit(snap_env, "snapshot", "recover", "--json")
    assert rec.returncode == 0, rec.stderr
    assert engine.catalog.list(dom.UUIDString()) == []
    assert not list(disk_paths(conn, file_vm)[0].parent.glob(f"*@{name}.kvmkit"))
    if step in ("after-intent", "after-freeze", "mid-snapshot", "after-thaw"):
        assert json.loads(rec.stdout)["actions"] or True  # the CLI's own cheap pass may have done it first


def test_watchdog_thaws_a_hung_snapshot_at_the_deadline(snap_env, conn, file_vm, engine):
    dom = conn.lookupByName(file_vm)
    env = {**snap_env, "KVMKIT_FAILPOINT": "mid-snapshot=hang", "KVMKIT_FREEZE_TIMEOUT_S": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "kvmkit", "snapshot", "create", file_vm, "--name", "hang1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while agent.freeze_status(dom) != "frozen":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        frozen_at = time.monotonic()
        while agent.freeze_status(dom) != "thawed":
            time.sleep(0.05)
        assert 1.0 < time.monotonic() - frozen_at < 6.0
        assert proc.poll() is None  # kvmkit itself still hangs: the watchdog thawed
    finally:
        proc.kill()
        proc.wait()
    assert kvmkit(snap_env, "snapshot", "recover").returncode == 0
    assert engine.catalog.list(dom.UUIDString()) == []
    assert not list(disk_paths(conn, file_vm)[0].parent.glob("*@hang1.kvmkit"))


def test_recover_reports_an_unmarked_snapshot_file_and_purges_it_only_when_asked(snap_env, conn, file_vm, engine):
    from kvmkit.snapshot.drivers.file import reflink

    disk = disk_paths(conn, file_vm)[0]
    orphan = disk.parent / f"{disk.name}@orphan1.kvmkit"
    reflink(disk, orphan)  # kvmkit's naming, but no catalog id on it: not provably this catalog's
    out = kvmkit(snap_env, "snapshot", "recover", "--json")
    report = json.loads(out.stdout)
    assert {"vm": file_vm, "handle": str(orphan)} in report["unknown"] and orphan.exists()
    refused = subprocess.run([sys.executable, "-m", "kvmkit", "snapshot", "recover", "--purge-foreign", "--vm",
                              file_vm], env=snap_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=120)  # no terminal, no --yes: the plan is refused, nothing deleted
    assert refused.returncode == 2 and "pass --yes" in refused.stderr and orphan.exists()
    out = kvmkit(snap_env, "snapshot", "recover", "--purge-foreign", "--vm", file_vm, "--json",
                 "--yes")
    actions = json.loads(out.stdout)["actions"]
    assert {"vm": file_vm, "action": "purged unknown", "handle": str(orphan), "whose": "unknown",
            "detail": f"{orphan} (no catalog id)"} in actions
    assert not orphan.exists()
    assert disk.exists()


def test_a_second_state_dir_recover_deletes_none_of_the_firsts_snapshots(snap_env, conn, lab_state, tmp_path):
    """Issue 15: a recover run with another state dir (a second install, a test run, a cron job) on the same host
    took every snapshot file of the first catalog for an orphan. Now it reports them as foreign."""
    vm = lab_state.vms[0].name  # one file disk and one RBD disk
    second = {**snap_env, "KVMKIT_STATE_DIR": str(tmp_path / "second-state")}
    made = kvmkit(snap_env, "snapshot", "create", vm, "--name", "owned1", "--crash-consistent", "--json")
    assert made.returncode == 0, made.stderr
    (record,) = json.loads(made.stdout)["snapshots"]
    handles = sorted(d["handle"] for d in record["disks"])
    assert {d["driver"] for d in record["disks"]} == {"file", "rbd"}
    try:
        out = kvmkit(second, "snapshot", "recover", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert sorted(f["handle"] for f in report["foreign"] if f["vm"] == vm) == handles
        assert not [a for a in report["actions"] if a["action"] in ("deleted orphan", "dropped dangling row")]
        listed = json.loads(kvmkit(snap_env, "snapshot", "list", vm, "--json").stdout)
        assert [s["name"] for s in listed] == ["owned1"] and listed[0]["state"] == "ready"
        mine = json.loads(kvmkit(snap_env, "snapshot", "recover", "--json").stdout)  # other tests' catalogs
        assert [f for f in mine["foreign"] if f["vm"] == vm] == []  # may have made snapshots of other VMs
    finally:
        assert kvmkit(snap_env, "snapshot", "delete", vm, "owned1", "--yes").returncode == 0
def test_invalid_input_raised_before_any_action(engine, file_vm):
    with pytest.raises(InvalidInput):
        engine.create(file_vm, "bad name")


def test_backup_to_secondary_backs_up_after_the_thaw(snap_env, file_vm, tmp_path):
    env = backup_env(snap_env, tmp_path, "backup_to_secondary = true\n")
    out = kvmkit(env, "snapshot", "create", file_vm, "--name", "bk1", "--json")
    assert out.returncode == 0, out.stderr
    (data,) = json.loads(out.stdout)["snapshots"]
    assert data["state"] == "ready" and data["backup"]["target"] == "sec" and data["backup"]["parent"] is None
    assert any((tmp_path / "secondary").rglob("*")), "nothing was written to the secondary target"
    out = kvmkit(env, "snapshot", "create", file_vm, "--name", "bk2", "--json")
    assert json.loads(out.stdout)["snapshots"][0]["backup"]["parent"] == "bk1"  # the second one is incremental
    nob = kvmkit(env, "snapshot", "create", file_vm, "--name", "bk3", "--no-backup", "--json")
    assert "backup" not in json.loads(nob.stdout)["snapshots"][0]
    for name in ("bk1", "bk2", "bk3"):
        kvmkit(env, "snapshot", "delete", file_vm, name, "--yes")
