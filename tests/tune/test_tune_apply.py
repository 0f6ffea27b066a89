"""apply + rollback: round trips on a writable capture tree and, for one sysctl, on this live host."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from tests.unprivileged import python_for_nobody

from kvmkit.errors import Conflict, InvalidInput, NotFound, OperationFailed
from kvmkit.tune import apply as tune_apply
from kvmkit.tune.capture import view_of
from kvmkit.tune.checks import read_all
from kvmkit.tune.evaluate import evaluate
from kvmkit.tune.hostfs import HostView
from kvmkit.tune.model import Status
from kvmkit.tune.profiles import load_profile

RUNTIME_LATENCY = {
    "cpufreq_governor",
    "epp",
    "epb",
    "turbo",
    "cstate_exit_latency_us",
    "ksm_run",
    "numa_balancing",
    "swappiness",
    "dirty_ratio",
    "dirty_background_ratio",
    "io_scheduler",
}


def _values(host: HostView) -> dict:
    return {r.check: (r.values, r.unknown) for r in read_all(host)}


def _plan_and_apply(host: HostView, goal: str, rollback_file: Path, only: set[str] | None = None):
    profile = load_profile(goal)
    planned = tune_apply.plan(host, profile, read_all(host), only)
    return tune_apply.apply(host, planned, rollback_file)


def test_apply_then_rollback_round_trip_on_capture_tree(xeon, tmp_path: Path):
    before = _values(xeon)
    rollback_file = tmp_path / "state" / "rollback.json"
    result = _plan_and_apply(xeon, "latency", rollback_file)

    assert {c.check for c in result.changes} == RUNTIME_LATENCY
    assert all(c.outcome == "done" for c in result.changes)
    assert stat.S_IMODE(rollback_file.stat().st_mode) == 0o600
    after = {f.check: f.status for f in evaluate(load_profile("latency"), read_all(xeon))}
    assert all(after[check] == Status.PASS for check in RUNTIME_LATENCY), after
    assert (xeon.root / "sys/devices/system/cpu/intel_pstate/no_turbo").read_text() == "1"
    assert (xeon.root / "sys/devices/system/cpu/cpu5/cpuidle/state3/disable").read_text() == "1"
    assert (xeon.root / "sys/devices/system/cpu/cpu5/cpuidle/state2/disable").read_text().strip() == "0"

    restored = tune_apply.rollback(xeon, rollback_file)
    assert len(restored) == len(result.changes)
    assert _values(xeon) == before
    assert not rollback_file.exists()


def test_dry_run_plans_without_writing(xeon, tmp_path: Path):
    before = _values(xeon)
    planned = tune_apply.plan(xeon, load_profile("latency"), read_all(xeon))
    assert {c.check for c in planned.changes} == RUNTIME_LATENCY
    swappiness = next(c for c in planned.changes if c.check == "swappiness")
    assert (swappiness.old, swappiness.new) == ("60", "10")
    assert "nohz_full" in planned.not_runtime  # kernel command line: never written at runtime
    assert "smt" in planned.not_runtime  # disruptive: offlines CPUs
    assert _values(xeon) == before


def test_apply_picks_a_value_the_host_offers(xeon, tmp_path: Path):
    """per-watt prefers schedutil, which intel_pstate does not offer: apply falls back to powersave."""
    for n in range(8):
        (xeon.root / f"sys/devices/system/cpu/cpufreq/policy{n}/scaling_governor").write_text("performance\n")
    result = _plan_and_apply(xeon, "per-watt", tmp_path / "rb.json", {"cpufreq_governor"})
    assert {c.new for c in result.changes} == {"powersave"} and len(result.changes) == 8
    audit = {f.check: f.status for f in evaluate(load_profile("per-watt"), read_all(xeon))}
    assert audit["cpufreq_governor"] == Status.PASS


def test_apply_skips_a_choice_the_host_does_not_offer(xeon, tmp_path: Path):
    (xeon.root / "sys/block/nvme1n1/queue/scheduler").write_text("[mq-deadline] kyber\n")  # no "none" built in
    planned = tune_apply.plan(xeon, load_profile("throughput"), read_all(xeon), {"io_scheduler"})
    assert planned.changes == [] and planned.not_runtime == ["io_scheduler"]


def test_apply_refuses_to_overwrite_a_pending_rollback(xeon, tmp_path: Path):
    rollback_file = tmp_path / "rollback.json"
    _plan_and_apply(xeon, "latency", rollback_file, {"swappiness"})
    with pytest.raises(Conflict, match="run `kvmkit tune rollback` first"):
        _plan_and_apply(xeon, "latency", rollback_file, {"dirty_ratio"})
    assert (xeon.root / "proc/sys/vm/dirty_ratio").read_text().strip() == "20"


def test_apply_with_nothing_to_change_writes_no_rollback_file(xeon, tmp_path: Path):
    rollback_file = tmp_path / "rollback.json"
    result = _plan_and_apply(xeon, "per-watt", rollback_file, {"cstates_disabled"})
    assert result.changes == [] and result.rollback_file is None
    assert not rollback_file.exists()


def test_only_rejects_checks_outside_the_goal(xeon, tmp_path: Path):
    with pytest.raises(InvalidInput, match="--only: nohz_full not in goal 'balanced'"):
        _plan_and_apply(xeon, "balanced", tmp_path / "r.json", {"nohz_full"})


def test_failed_write_rolls_back_the_successful_ones(xeon, tmp_path: Path, monkeypatch):
    before = _values(xeon)
    real_write = tune_apply._write

    def flaky(host, path, value):
        if path == "/proc/sys/vm/dirty_ratio":
            raise PermissionError(13, "Permission denied")
        real_write(host, path, value)

    monkeypatch.setattr(tune_apply, "_write", flaky)
    rollback_file = tmp_path / "rollback.json"
    with pytest.raises(
        OperationFailed,
        match=r"1 of 39 writes failed \(dirty_ratio /proc/sys/vm/dirty_ratio: "
        r"Permission denied\); the 38 that succeeded were rolled back",
    ):
        _plan_and_apply(xeon, "latency", rollback_file)
    assert _values(xeon) == before
    assert not rollback_file.exists()


@pytest.fixture
def read_only(tmp_path: Path):
    """Bind-mount one file read-only, like a read-only /sys (the suite runs as root, so mounting is allowed)."""
    mounted: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            pytest.fail("bind mounts need root: run the suite as root (make test does)")
        for argv in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]):
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                if mounted:
                    subprocess.run(["umount", str(path)], check=False)
                pytest.fail(f"cannot bind-mount here: {proc.stderr.strip()}")
            if not mounted or mounted[-1] != path:
                mounted.append(path)

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_file_fails_apply_and_restores_others(xeon, tmp_path: Path, read_only):
    before = _values(xeon)
    read_only(xeon.root / "sys/kernel/mm/ksm/run")
    rollback_file = tmp_path / "rollback.json"
    with pytest.raises(OperationFailed, match=r"ksm_run /sys/kernel/mm/ksm/run: Read-only file system"):
        _plan_and_apply(xeon, "latency", rollback_file)
    assert _values(xeon) == before
    assert not rollback_file.exists()


def test_rollback_without_file_is_not_found(xeon, tmp_path: Path):
    with pytest.raises(NotFound, match="nothing to roll back"):
        tune_apply.rollback(xeon, tmp_path / "none.json")


def test_rollback_refuses_a_file_written_for_another_root(xeon, tmp_path: Path):
    rollback_file = tmp_path / "rollback.json"
    _plan_and_apply(xeon, "latency", rollback_file, {"swappiness"})
    with pytest.raises(InvalidInput, match="was written for root"):
        tune_apply.rollback(HostView(tmp_path), rollback_file)
    tune_apply.rollback(xeon, rollback_file)


def test_corrupt_rollback_file_is_invalid_input(xeon, tmp_path: Path):
    rollback_file = tmp_path / "rollback.json"
    rollback_file.write_text("{not json")
    with pytest.raises(InvalidInput, match="not a kvmkit tune rollback record"):
        tune_apply.rollback(xeon, rollback_file)


def _custom_swappiness_profile(tmp_path: Path, target: int) -> Path:
    path = tmp_path / "swap-test.toml"
    path.write_text(
        f'description = "test"\n[checks.swappiness]\nexpect = {{ equals = {target} }}\n'
        'why = "test of the live round trip"\nsource = "this test"\n'
    )
    return path


@pytest.fixture
def live_lock():
    """Serialise the tests that write the live vm.swappiness: two suites running at once would otherwise read
    each other's temporary value as the original and leave it behind."""
    with open("/tmp/kvmkit-tune-live-test.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.mark.skipif(os.geteuid() != 0, reason="writing /proc/sys needs root")
def test_live_round_trip_on_swappiness(tmp_path: Path, live_lock):
    """The one live write: vm.swappiness moves by one and is put back in the same test."""
    live = Path("/proc/sys/vm/swappiness")
    original = live.read_text().strip()
    target = int(original) + 1 if int(original) < 100 else int(original) - 1
    host = HostView()
    profile = load_profile(str(_custom_swappiness_profile(tmp_path, target)))
    rollback_file = tmp_path / "rollback.json"
    try:
        planned = tune_apply.plan(host, profile, read_all(host))
        assert [(c.path, c.old, c.new) for c in planned.changes] == [("/proc/sys/vm/swappiness", original, str(target))]
        tune_apply.apply(host, planned, rollback_file)
        assert live.read_text().strip() == str(target)
        tune_apply.rollback(host, rollback_file)
        assert live.read_text().strip() == original
    finally:
        live.write_text(original)


@pytest.fixture
def shared_dir():
    """A folder user nobody can use (pytest's own tmp folders are private to root)."""
    with tempfile.TemporaryDirectory(prefix="kvmkit-tune-test-") as folder:
        os.chmod(folder, 0o777)
        yield Path(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_live_apply_as_non_root_fails_and_changes_nothing(shared_dir: Path, live_lock):
    tmp_path = shared_dir
    live = Path("/proc/sys/vm/swappiness")
    original = live.read_text().strip()
    target = int(original) + 1 if int(original) < 100 else int(original) - 1
    profile = _custom_swappiness_profile(tmp_path, target)
    profile.chmod(0o644)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kvmkit.errors import KvmkitError\n"
        "from kvmkit.tune import apply as a\n"
        "from kvmkit.tune.checks import read_all\n"
        "from kvmkit.tune.hostfs import HostView\n"
        "from kvmkit.tune.profiles import load_profile\n"
        "h = HostView()\n"
        f"p = load_profile({str(profile)!r})\n"
        "try:\n"
        f"    a.apply(h, a.plan(h, p, read_all(h)), Path({str(tmp_path / 'rb.json')!r}))\n"
        "except KvmkitError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(exc.exit_code)\n"
    )
    try:
        with python_for_nobody("kvmkit.tune.apply", "kvmkit.tune.checks", "kvmkit.tune.profiles") as (python, env):
            proc = subprocess.run([*python, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                                  check=False)
        assert proc.returncode == OperationFailed.exit_code, proc.stderr
        assert "Permission denied" in proc.stdout and "swappiness" in proc.stdout
        assert "nothing was changed" in proc.stdout
        assert live.read_text().strip() == original
        assert not (tmp_path / "rb.json").exists()
    finally:
        live.write_text(original)


def test_view_of_plain_tree_is_writable_for_apply(tmp_path: Path):
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/swappiness").write_text("60\n")
    host = view_of(tmp_path)
    result = _plan_and_apply(host, "latency", tmp_path / "rb.json")
    assert [(c.check, c.new) for c in result.changes] == [("swappiness", "10")]


def test_value_the_kernel_did_not_keep_fails_and_is_put_back(xeon, tmp_path: Path, monkeypatch):
    """sysfs can accept a write and keep something else: that is a failure, and the file still goes back."""
    before = _values(xeon)
    real_write = tune_apply._write

    def stubborn(host, path, value):
        real_write(host, path, "99" if path == "/proc/sys/vm/swappiness" and value == "10" else value)

    monkeypatch.setattr(tune_apply, "_write", stubborn)
    with pytest.raises(OperationFailed, match=r"swappiness /proc/sys/vm/swappiness: the kernel kept '99'"):
        _plan_and_apply(xeon, "latency", tmp_path / "rb.json")
    assert _values(xeon) == before


def test_rollback_from_another_working_folder_matches_the_root(xeon_folder: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(xeon_folder.parent)
    relative = view_of(Path(xeon_folder.name))
    _plan_and_apply(relative, "latency", tmp_path / "rb.json", {"swappiness"})
    monkeypatch.chdir(tmp_path)
    tune_apply.rollback(view_of(xeon_folder), tmp_path / "rb.json")
    assert (xeon_folder / "root/proc/sys/vm/swappiness").read_text() == "60"
