"""State, log and health folders are 0700 whatever the umask (cron runs jobs with 022: Path.mkdir(parents=True)
made every parent 0755, so anyone on the host could list which VMs are snapshotted and read job names)."""

from __future__ import annotations

import os
import stat

from kvmkit.errors import OperationFailed
from kvmkit.health import events
from kvmkit.joblog import job_log
from kvmkit.jobs import schedule


def test_folders_kvmkit_makes_for_its_state_are_0700_under_a_cron_umask(tmp_path):
    state = tmp_path / "var" / "lib" / "kvmkit"
    old = os.umask(0o022)
    try:
        with job_log(state, "snapshot", "web1", "snapshot create s1"):
            pass
        events.record(state, events.EventKind.SNAPSHOT_FAILURE, "web1", OperationFailed("x"))
        schedule.add(schedule.Settings(state_dir=state), schedule.Schedule(vm="web1", every_s=3600, keep_last=1))
    finally:
        os.umask(old)
    made = [tmp_path / "var", tmp_path / "var" / "lib", state, state / "log", state / "log" / "snapshot",
            state / "log" / "snapshot" / "web1", state / "health"]
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        str(p.relative_to(tmp_path)): "0o700" for p in made}
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files), [
        (p, oct(p.stat().st_mode)) for p in files]
