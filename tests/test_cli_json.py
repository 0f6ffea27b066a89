"""docs/cli.md's --json conventions, checked on real output: kvmkit runs as a subprocess against libvirt's in-memory
test:///default driver, with a private state folder whose catalog holds a snapshot of its domain `test` (a file
disk in tmp_path, so `snapshot delete` really deletes it)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import libvirt
import pytest
from pydantic import BaseModel, Field

from kvmkit import errors, output
from kvmkit.snapshot.catalog import Catalog
from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State

TEST_URI = "test:///default"
LOOKS_LIKE_A_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?")
# streams that still print their on-disk record (epoch seconds) with --json: congestion/memory cli.py should print
# each interval with kvmkit.output.print_json_line (owners: congestion, memory)
STREAMS = {("congestion", "sample"), ("memory", "sample")}  # JSON Lines: one document per interval


def kvmkit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.fixture()
def env(tmp_path) -> dict[str, str]:
    return {**os.environ, "KVMKIT_STATE_DIR": str(tmp_path / "state"), "KVMKIT_LAB_DIR": str(tmp_path / "lab")}


@pytest.fixture()
def catalogued(tmp_path, env) -> Path:
    """A ready snapshot `s1` of test:///default's domain, whose disk snapshot is a real file; returns that file."""
    disk, handle = tmp_path / "disk.raw", tmp_path / "disk.raw@s1.kvmkit"
    for path in (disk, handle):
        path.write_bytes(b"\0" * 4096)
    conn = libvirt.open(TEST_URI)
    try:
        uuid = conn.lookupByName("test").UUIDString()
    finally:
        conn.close()
    state = Path(env["KVMKIT_STATE_DIR"])
    state.mkdir(mode=0o700)
    catalog = Catalog(state / "catalog.sqlite")
    try:  # naive local time, as the engine's clock writes rows
        catalog.insert(Snapshot(vm_uuid=uuid, vm="test", name="s1", created=datetime.now(), mode=Mode.CRASH,
                                state=State.READY, disks=[DiskSnapshot(target="vda", driver="file", source=str(disk),
                                                                       handle=str(handle), size_bytes=4096)]))
    finally:
        catalog.close()
    return handle


def timestamps_problems(doc, key: str = "") -> list[str]:
    """Every value that is a time but not ISO 8601 with a zone, or an epoch float under a timestamp key."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in timestamps_problems(v, k)]
    if isinstance(doc, list):
        return [p for v in doc for p in timestamps_problems(v, key)]
    if isinstance(doc, str) and LOOKS_LIKE_A_TIME.fullmatch(doc):  # a value that is a time, not a sentence
        try:
            moment = datetime.fromisoformat(doc)
        except ValueError:
            return [f"{key}={doc!r}: not ISO 8601"]
        return [] if moment.tzinfo is not None and "T" in doc and not doc.endswith("Z") \
            else [f"{key}={doc!r}: not T…±HH:MM"]
    if isinstance(doc, float) and output.is_timestamp_key(key):
        return [f"{key}={doc!r}: epoch seconds"]
    return []


# the encoder, on its own --------------------------------------------------------------------------------------
class _Disk(BaseModel):
    target: str


class _Record(BaseModel):
    created: datetime
    time: float
    interval_s: float
    schema_: str = Field("v1", alias="schema")
    disks: list[_Disk]
    ratio: float = math.nan


def test_the_encoder_writes_every_time_as_iso_8601_with_its_zone():
    naive = datetime(2026, 12, 3, 12, 0, 0)
    doc = output.to_jsonable(_Record(created=naive, time=1_796_000_000.5, interval_s=2.0, disks=[_Disk(target="vda")]))
    assert doc["created"] == naive.astimezone().isoformat()  # a naive time is local time, and says its offset
    assert datetime.fromisoformat(doc["time"]) == datetime.fromtimestamp(1_796_000_000.5, UTC)
    assert doc["interval_s"] == 2.0 and doc["schema"] == "v1" and doc["ratio"] is None
    aware = datetime(2026, 12, 3, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert output.to_jsonable({"finished_at": aware, "when": [aware]}) == {
        "finished_at": "2026-12-03T12:00:00-05:00", "when": ["2026-12-03T12:00:00-05:00"]}
    assert output.to_jsonable({"time": 3.5}) == {"time": 3.5}  # not an epoch: a duration under a careless name
    assert timestamps_problems(doc) == []


def test_a_stream_record_is_one_line(capsys):
    output.print_json_line({"time": 1_796_000_000.0, "vm": "a"})
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and json.loads(line)["time"].startswith("20")


def test_only_registered_disk_records_rename_target_to_disk():
    assert output.to_jsonable(_Disk(target="vda")) == {"target": "vda"}  # a backup target stays a target
    output.disk_record(_Disk)
    try:
        assert output.to_jsonable({"disks": [_Disk(target="vda")]}) == {"disks": [{"disk": "vda"}]}
    finally:
        output._DISK_RECORDS.discard(_Disk)
    with pytest.raises(TypeError):
        output.disk_record(_Record)


# real output --------------------------------------------------------------------------------------------------
def test_snapshot_list_and_delete_json_name_the_disk_and_date_with_a_zone(env, catalogued):
    listed = kvmkit("snapshot", "list", "--connect", TEST_URI, "--json", env={**env, "TZ": "Asia/Kolkata"})
    assert listed.returncode == 0, listed.stderr
    (snap,) = json.loads(listed.stdout)
    assert snap["created"].endswith("+05:30")  # the catalog's naive local time, printed with the local offset
    assert [(d["disk"], d["snapshot"]) for d in snap["disks"]] == [("vda", str(catalogued))]
    assert "target" not in snap["disks"][0] and timestamps_problems(snap) == []
    deleted = kvmkit("snapshot", "delete", "test", "s1", "--connect", TEST_URI, "--json", "--yes", env=env)
    assert deleted.returncode == 0, deleted.stderr
    record = json.loads(deleted.stdout)
    assert record["state"] == "deleted" and record["disks"][0]["disk"] == "vda"  # the final state, not "deleting"
    assert not catalogued.exists()
    assert json.loads(kvmkit("snapshot", "list", "--connect", TEST_URI, "--json", env=env).stdout) == []


def test_snapshot_create_json_has_one_shape_for_one_vm_or_several(env):
    one = kvmkit("snapshot", "create", "test", "--connect", TEST_URI, "--json", env=env)
    two = kvmkit("snapshot", "create", "test", "tset", "--connect", TEST_URI, "--json", env=env)
    assert one.returncode == errors.EnvironmentProblem.exit_code  # test:///default's domain has no agent
    assert two.returncode == errors.EnvironmentProblem.exit_code  # the worst of the VMs' codes
    first, both = json.loads(one.stdout), json.loads(two.stdout)
    assert first.keys() == both.keys() == {"snapshots", "errors"}
    assert first["snapshots"] == both["snapshots"] == []
    assert [(e["vm"], e["type"], e["exit_code"]) for e in both["errors"]] == [
        ("test", "environment_problem", 5), ("tset", "not_found", 3)]
    assert "did you mean 'test'?" in both["errors"][1]["message"]
    assert first["errors"] == both["errors"][:1]
    assert one.stderr.count("\n") == 1 and one.stderr.startswith("kvmkit: error: VM test: no guest agent answers")


def test_json_output_of_commands_that_print_times_has_no_epoch_or_naive_time(env, catalogued, tmp_path):
    runs = {("snapshot", "list"): kvmkit("snapshot", "list", "-c", TEST_URI, "--json", env=env),
            ("doctor",): kvmkit("doctor", "-c", TEST_URI, "--json", env=env),
            ("bench", "run"): kvmkit("bench", "run", "-s", "sweep", "-t", str(tmp_path / "t.dat"), "--size", "16M",
                                     "--runtime", "1", "--ramp", "0", "--qd", "4", "--json", env=env),
            ("congestion", "sample"): kvmkit("congestion", "sample", "--interval", "0.2", "--json", env=env),
            ("memory", "sample"): kvmkit("memory", "sample", "--interval", "0.2", "--json", env=env)}
    bench = json.loads(runs["bench", "run"].stdout)
    assert datetime.fromisoformat(bench["started_at"]) <= datetime.fromisoformat(bench["finished_at"])
    for command, run in runs.items():
        docs = [json.loads(line) for line in run.stdout.splitlines()] if command in STREAMS \
            else [json.loads(run.stdout)]
        assert docs and [p for doc in docs for p in timestamps_problems(doc)] == [], command


def test_usage_errors_are_json_too_with_json(env):
    out = kvmkit("snapshot", "list", "--json", "--bogus", env=env)
    assert out.returncode == 2
    assert json.loads(out.stdout) == {"error": {"type": "usage_error", "message": "No such option: --bogus",
                                                "exit_code": 2}}
    assert "No such option: --bogus" in out.stderr


def test_snapshot_delete_shows_its_plan_and_needs_yes_without_a_terminal(env, catalogued):
    dry = kvmkit("snapshot", "delete", "test", "s1", "--connect", TEST_URI, "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["vm"] == "test"
    assert plan["plan"] == [f"delete file snapshot {catalogued} of disk vda", "drop snapshot s1 from the catalog"]
    refused = kvmkit("snapshot", "delete", "test", "s1", "--connect", TEST_URI, env=env)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == ["kvmkit: error: kvmkit snapshot delete test s1 changes this host and stdin "
                                           "is not a terminal: pass --yes to go ahead (--dry-run shows the plan)"]
    assert catalogued.exists()  # neither the dry run nor the refusal changed anything
    missing = kvmkit("snapshot", "delete", "test", "never", "--connect", TEST_URI, env=env)
    assert missing.returncode == 3  # a missing snapshot is said before anything is asked


def test_snapshot_revert_shows_what_it_replaces(env, catalogued):
    dry = kvmkit("snapshot", "revert", "test", "s1", "--connect", TEST_URI, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "test: would replace disk vda of VM test (file: " in dry.stdout
    assert "what was written since is lost" in dry.stdout
    refused = kvmkit("snapshot", "revert", "test", "s1", "--connect", TEST_URI, "--force-stop", env=env)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
