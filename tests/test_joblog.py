"""Per-job logs: one 0600 file per operation on one VM, its records and its outcome, the newest kept."""

from __future__ import annotations

import logging
import stat
import threading

import pytest

from kvmkit import joblog
from kvmkit.errors import Conflict


def test_a_job_logs_its_vms_records_with_their_fields_and_its_outcome(tmp_path):
    log = logging.getLogger("kvmkit.snapshot.create")
    with joblog.job_log(tmp_path, "snapshot", "web1", "snapshot create s1") as path:
        log.info("snapshot created", extra={"vm": "web1", "snapshot": "s1", "froze_ms": 12.5})
        log.info("snapshot created", extra={"vm": "db1", "snapshot": "s1"})  # another VM's job, same process
        log.debug("too fine for the job log", extra={"vm": "web1"})
    text = path.read_text()
    assert path.parent == tmp_path / "log" / "snapshot" / "web1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "job snapshot: snapshot create s1" in text
    assert "snapshot created vm=web1 snapshot=s1 froze_ms=12.5" in text
    assert "db1" not in text and "too fine" not in text
    assert text.rstrip().endswith("job ok vm=web1")


def test_a_failed_job_ends_with_its_error_and_the_error_still_raises(tmp_path):
    with pytest.raises(Conflict), joblog.job_log(tmp_path, "delete", "web1", "snapshot delete s1"):
        raise Conflict("snapshot s1 is in use by backup\nsecond line")
    (path,) = joblog.recent(tmp_path, "delete", "web1")
    assert path.read_text().rstrip().endswith("job failed: snapshot s1 is in use by backup vm=web1")


def test_records_of_other_threads_without_a_vm_stay_out(tmp_path):
    log = logging.getLogger("kvmkit.backup.create")
    with joblog.job_log(tmp_path, "backup", "web1", "backup create s1") as path:
        log.info("from the job's thread")
        other = threading.Thread(target=lambda: log.info("from someone else's thread"))
        other.start()
        other.join()
    text = path.read_text()
    assert "from the job's thread" in text and "someone else" not in text


def test_only_the_newest_logs_are_kept_and_the_console_level_is_unchanged(tmp_path, capsys):
    root = logging.getLogger()
    console = logging.StreamHandler()
    root.addHandler(console)
    try:
        for _ in range(joblog.KEEP + 5):
            with joblog.job_log(tmp_path, "snapshot", "web1", "snapshot create"):
                logging.getLogger("kvmkit.x").info("an info line the console must not show")
    finally:
        root.removeHandler(console)
    assert len(list((tmp_path / "log" / "snapshot" / "web1").iterdir())) == joblog.KEEP
    assert "an info line" not in capsys.readouterr().err
    assert logging.getLogger("kvmkit").level == logging.NOTSET  # put back


@pytest.mark.parametrize("vm", ["../x", "", "a/b"])
def test_a_name_that_is_not_one_folder_gets_no_log_and_the_job_still_runs(tmp_path, vm):
    ran = []
    with pytest.raises(ValueError):
        joblog.folder(tmp_path, "snapshot", vm)
    with joblog.job_log(tmp_path, "snapshot", vm, "x"):
        ran.append(True)
    assert ran and not (tmp_path / "log").exists()
