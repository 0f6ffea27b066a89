"""Backups of real (sparse) image files into a real directory target: full, incremental, restore, verify,
damaged and missing chunks, kill -9, delete with dependants, prune."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.backup import manage, restore
from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.retention import RetentionPolicy
from kvmkit.errors import Conflict, InvalidInput, NotFound, OperationFailed
from tests.backup.conftest import MiB, changed_bytes, file_snapshot, later, randbytes, sha, sparse_file


def two_snapshots(tmp_path: Path, settings):
    base = [(3 * MiB + 100, randbytes(2 * MiB)), (20 * MiB, b"text " * 50000)]
    s1 = sparse_file(tmp_path / "vda@s1", 32 * MiB, base)
    b1 = sparse_file(tmp_path / "vdb@s1", 16 * MiB, [(0, randbytes(MiB))])
    snap1 = file_snapshot("s1", {"vda": s1, "vdb": b1})
    m1 = backup_snapshot(settings, snap1)
    s2 = sparse_file(tmp_path / "vda@s2", 32 * MiB, [*base, (10 * MiB, randbytes(3 * MiB))])
    b2 = sparse_file(tmp_path / "vdb@s2", 16 * MiB, [(0, randbytes(MiB))])
    snap2 = file_snapshot("s2", {"vda": s2, "vdb": b2}, when=later(snap1))
    m2 = backup_snapshot(settings, snap2)
    return (s1, b1, m1), (s2, b2, m2)


def test_full_then_incremental_writes_only_changed_bytes_and_restores_both(tmp_path, settings):
    (s1, b1, m1), (s2, b2, m2) = two_snapshots(tmp_path, settings)
    assert m1.kind.value == "full" and m1.parent is None
    assert m1.read_bytes == 5 * MiB  # only chunks holding data were read: holes are skipped
    assert m2.kind.value == "incremental" and m2.parent == "s1"
    truth = changed_bytes(s1, s2) + changed_bytes(b1, b2)
    assert truth == 4 * MiB
    assert m2.written_bytes <= 1.05 * truth + m2.manifest_bytes
    assert m2.written_bytes >= 4 * MiB  # random data does not compress: the new chunks really were written
    for snap, (vda, vdb) in (("s1", (s1, b1)), ("s2", (s2, b2))):
        out = tmp_path / f"restore-{snap}"
        out.mkdir()
        restore.restore(settings, "vm1", snap, to=[f"vda={out / 'a'}", f"vdb={out / 'b'}"])
        assert sha(out / "a") == sha(vda) and sha(out / "b") == sha(vdb)
        assert os.stat(out / "a").st_blocks * 512 < 16 * MiB  # restored sparse: zero chunks never written
    assert [m.snapshot for m in manage.list_backups(settings, "vm1")[0]] == ["s1", "s2"]


def test_verify_names_a_damaged_chunk_and_every_disk_that_needs_it(tmp_path, settings):
    shared = randbytes(MiB)
    a = sparse_file(tmp_path / "a", 4 * MiB, [(0, shared), (2 * MiB, randbytes(MiB))])
    b = sparse_file(tmp_path / "b", 4 * MiB, [(MiB, shared)])
    backup_snapshot(settings, file_snapshot("s1", {"vda": a, "vdb": b}))
    digest = __import__("kvmkit.backup.codec", fromlist=["chunk_id"]).chunk_id(shared)
    chunk = settings.backup_targets[0].path / "chunks" / digest[:2] / digest
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    chunk.write_bytes(bytes(blob))
    report = restore.verify(settings, "vm1")
    assert [(d.chunk, d.problem.split(" (")[0], d.disks) for d in report.damaged] == [
        (digest, "hash mismatch", ["s1:vda", "s1:vdb"])]
    dest = tmp_path / "dest"
    dest.write_bytes(b"precious")
    with pytest.raises(OperationFailed, match=rf"chunk {digest} is damaged .* needed by disk\(s\) s1:vda, s1:vdb"):
        restore.restore(settings, "vm1", "s1", to=[f"vda={dest}", f"vdb={tmp_path / 'other'}"], replace=True)
    assert dest.read_bytes() == b"precious"  # never a silently wrong disk
    assert not list(tmp_path.glob("*.kvmkit-restore")) and not (tmp_path / "other").exists()


def test_a_damaged_delta_base_is_named_with_the_disks_of_the_backups_that_need_it(tmp_path, settings):
    base = randbytes(MiB)
    a = sparse_file(tmp_path / "a", 2 * MiB, [(0, base)])
    s1 = file_snapshot("s1", {"vda": a})
    m1 = backup_snapshot(settings, s1)
    b = sparse_file(tmp_path / "b", 2 * MiB, [(0, base), (8192, b"changed")])
    m2 = backup_snapshot(settings, file_snapshot("s2", {"vda": b}, when=later(s1)))
    assert m2.written_bytes < 8192  # one 4 KiB block of a 1 MiB chunk: a delta, not the chunk again
    digest = m1.disks[0].chunks[0][1]
    (settings.backup_targets[0].path / "chunks" / digest[:2] / digest).unlink()
    report = restore.verify(settings, "vm1")
    assert [(d.chunk, d.problem, d.disks) for d in report.damaged] == [(digest, "missing", ["s1:vda", "s2:vda"])]
    with pytest.raises(OperationFailed, match=rf"chunk {digest} is damaged \(missing\); it is needed by disk\(s\) "
                                              r"s2:vda; nothing was restored"):
        restore.restore(settings, "vm1", "s2", to=[str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_a_missing_chunk_is_reported_by_verify(tmp_path, settings):
    a = sparse_file(tmp_path / "a", 2 * MiB, [(0, randbytes(10))])
    m = backup_snapshot(settings, file_snapshot("s1", {"vda": a}))
    digest = m.disks[0].chunks[0][1]
    (settings.backup_targets[0].path / "chunks" / digest[:2] / digest).unlink()
    report = restore.verify(settings, "vm1", "s1")
    assert not report.ok and report.damaged[0].problem == "missing" and report.damaged[0].disks == ["s1:vda"]


def test_kill_9_before_the_manifest_is_never_listed_and_the_rerun_resumes(tmp_path, settings):
    a = sparse_file(tmp_path / "a", 8 * MiB, [(0, randbytes(6 * MiB))])
    target = settings.backup_targets[0].path
    code = f"""
from pathlib import Path
from kvmkit.backup.create import backup_snapshot
from kvmkit.config import BackupTarget, Settings
from tests.backup.conftest import file_snapshot
backup_snapshot(Settings(state_dir=Path({str(tmp_path / "state")!r}),
                         backup_targets=[BackupTarget(name="t1", path=Path({str(target)!r}))]),
                file_snapshot("s1", {{"vda": Path({str(a)!r})}}))
"""
    env = {**os.environ, "KVMKIT_FAILPOINT": "backup-before-manifest"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((target / "chunks").rglob("*"))) > 6  # the chunks were written …
    assert manage.list_backups(settings)[0] == []  # … but a partial backup is never listed
    m = backup_snapshot(settings, file_snapshot("s1", {"vda": a}))
    assert m.disks[0].new_chunks == 0 and m.written_bytes == 0  # resumed: nothing written twice
    assert restore.verify(settings, "vm1").ok


def test_delete_refuses_while_incrementals_depend_unless_with_dependants(tmp_path, settings):
    (_, _, _), (_, _, _) = two_snapshots(tmp_path, settings)
    with pytest.raises(Conflict, match="base of incremental backup\\(s\\) s2; pass --with-dependants"):
        manage.delete(settings, "vm1", "s1")
    assert len(manage.list_backups(settings)[0]) == 2
    removal = manage.delete(settings, "vm1", "s1", with_dependants=True)
    assert removal.deleted == ["s2", "s1"] and removal.chunks_removed > 0
    assert not list((settings.backup_targets[0].path / "chunks").rglob("*/*"))


def test_prune_rebases_a_kept_incremental_instead_of_keeping_its_whole_chain(tmp_path, settings):
    snaps, files = [], []
    for i in range(4):
        f = sparse_file(tmp_path / f"a{i}", 4 * MiB, [(0, randbytes(MiB)), (MiB, bytes([i + 1]) * 10)])
        snap = file_snapshot(f"s{i}", {"vda": f}, when=later(snaps[-1]) if snaps else None)
        snaps.append(snap)
        files.append(f)
        assert backup_snapshot(settings, snap).kind.value == ("full" if i == 0 else "incremental")
    dry = manage.prune(settings, "vm1", RetentionPolicy(keep_last=2), dry_run=True)
    assert dry.deleted == ["s1", "s0"] and len(manage.list_backups(settings)[0]) == 4
    removal = manage.prune(settings, "vm1", RetentionPolicy(keep_last=2))
    assert removal.deleted == ["s1", "s0"] and removal.rebased == ["s2"]
    # s0's and s1's random MiB go; their second chunks stay: s2's second chunk is a delta on s1's, s1's on s0's
    assert removal.chunks_removed == 2 and removal.bytes_freed > 2 * MiB
    kept = {m.snapshot: m for m in manage.list_backups(settings)[0]}
    assert kept["s2"].parent is None and kept["s2"].kind.value == "full" and kept["s3"].parent == "s2"
    assert restore.verify(settings, "vm1").ok
    restore.restore(settings, "vm1", "s3", to=[str(tmp_path / "r3")])
    assert sha(tmp_path / "r3") == sha(files[3])
    removal = manage.prune(settings, "vm1", RetentionPolicy())  # no rule: the newest stays regardless
    assert removal.deleted == ["s2"] and [m.snapshot for m in manage.list_backups(settings)[0]] == ["s3"]
    restore.restore(settings, "vm1", "s3", to=[str(tmp_path / "r3b")])
    assert sha(tmp_path / "r3b") == sha(files[3])


def test_kill_9_during_delete_loses_nothing_that_is_kept(tmp_path, settings):
    for i in range(3):
        f = sparse_file(tmp_path / f"a{i}", 4 * MiB, [(0, randbytes(MiB))])
        backup_snapshot(settings, file_snapshot(f"s{i}", {"vda": f}, vm=f"vm{i}"))
    target = settings.backup_targets[0].path
    code = f"""
from pathlib import Path
from kvmkit.backup.manage import delete
from kvmkit.config import BackupTarget, Settings
delete(Settings(state_dir=Path({str(settings.state_dir)!r}),
         backup_targets=[BackupTarget(name="t1", path=Path({str(target)!r}))]), "vm0", "s0")
"""
    env = {**os.environ, "KVMKIT_FAILPOINT": "prune-mid-delete"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert [m.vm for m in manage.list_backups(settings)[0]] == ["vm1", "vm2"]
    assert restore.verify(settings, "vm1").ok and restore.verify(settings, "vm2").ok


@pytest.mark.parametrize("step", ["prune-mid-rebase", "prune-mid-delete"])
def test_kill_9_during_prune_keeps_every_kept_backup_restorable(tmp_path, settings, step):
    files, snaps = [], []
    for i in range(4):
        f = sparse_file(tmp_path / f"a{i}", 4 * MiB, [(0, randbytes(MiB)), (2 * MiB, bytes([i + 1]) * 100)])
        snaps.append(file_snapshot(f"s{i}", {"vda": f}, when=later(snaps[-1]) if snaps else None))
        files.append(f)
        backup_snapshot(settings, snaps[-1])
    target = settings.backup_targets[0].path
    code = f"""
from pathlib import Path
from kvmkit.backup.manage import prune
from kvmkit.backup.retention import RetentionPolicy
from kvmkit.config import BackupTarget, Settings
settings = Settings(state_dir=Path({str(settings.state_dir)!r}),
         backup_targets=[BackupTarget(name="t1", path=Path({str(target)!r}))])
prune(settings, "vm1", RetentionPolicy(keep_last=2))
"""
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KVMKIT_FAILPOINT": step},
                          cwd=Path(__file__).parents[2], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    for name, f in (("s2", files[2]), ("s3", files[3])):
        restore.restore(settings, "vm1", name, to=[str(tmp_path / f"r-{name}")])
        assert sha(tmp_path / f"r-{name}") == sha(f)
    assert restore.verify(settings, "vm1").ok
    assert manage.prune(settings, "vm1", RetentionPolicy(keep_last=2)).deleted  # the rerun finishes the job
    assert [m.snapshot for m in manage.list_backups(settings)[0]] == ["s2", "s3"]


def test_bad_input_is_one_clear_error_and_changes_nothing(tmp_path, settings):
    a = sparse_file(tmp_path / "a", MiB, [(0, b"x")])
    b = sparse_file(tmp_path / "b", MiB, [(0, b"y")])
    backup_snapshot(settings, file_snapshot("s1", {"vda": a, "vdb": b}))
    def state() -> list[Path]:  # every path but the job logs (a refused command logs its refusal) and the
        # snapshot files the test's own file_snapshot links
        return sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                      if p.relative_to(tmp_path).parts[:2] != ("state", "log") and p.suffix != ".kvmkit"
                      and p.relative_to(tmp_path).parts != ("target", "lock"))  # a delete's lock file, empty

    before = state()
    cases = [
        (lambda: backup_snapshot(settings, file_snapshot("s1", {"vda": a})), Conflict, "already backed up"),
        (lambda: backup_snapshot(settings, file_snapshot("s9", {"vda": a}), "nope"), NotFound,
         "no backup target named"),
        (lambda: restore.restore(settings, "vm1", "s9"), NotFound, "has no backup of snapshot 's9'"),
        (lambda: restore.restore(settings, "ghost", "s1"), NotFound, "VM ghost has no backups"),
        (lambda: restore.restore(settings, "vm1", "s1", to=[str(tmp_path / "x")]), InvalidInput, "use --to DISK=DEST"),
        (lambda: restore.restore(settings, "vm1", "s1", to=[f"vdz={tmp_path}/x"]), InvalidInput, "no disk 'vdz'"),
        (lambda: restore.restore(settings, "vm1", "s1", to=[f"vda={a}", f"vdb={tmp_path}/new"]), Conflict,
         "exists; pass --force"),
        (lambda: manage.delete(settings, "vm1", "nope"), NotFound, "no backup of snapshot 'nope'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert state() == before


def test_no_target_and_incomplete_s3_targets_are_clear_errors(tmp_path, monkeypatch):
    from kvmkit.config import BackupTarget, Settings

    a = sparse_file(tmp_path / "a", MiB, [(0, b"x")])
    with pytest.raises(InvalidInput, match="no backup target configured"):
        backup_snapshot(Settings(), file_snapshot("s1", {"vda": a}))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    for target, message in [
        (BackupTarget(name="s3", kind="s3", bucket="b", secret_key="SECRET"), "kind s3 needs endpoint and bucket"),
        (BackupTarget(name="s3", kind="s3", endpoint="http://127.0.0.1:9", bucket="b", secret_key="SECRET"),
         "no S3 access key: set access_key or access_key_env, or export AWS_ACCESS_KEY_ID"),
        (BackupTarget(name="s3", kind="s3", endpoint="http://127.0.0.1:9", bucket="b", access_key_env="NO_SUCH_VAR",
                      secret_key="SECRET"), "environment variable NO_SUCH_VAR (access_key_env) is not set"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(message)) as info:
            backup_snapshot(Settings(state_dir=tmp_path / "state", backup_targets=[target]),
                            file_snapshot("s1", {"vda": a}))
        assert "SECRET" not in str(info.value)


def test_s3_keys_come_from_the_config_else_the_named_variables_else_aws_ones():
    from kvmkit.backup.s3 import credentials
    from kvmkit.config import BackupTarget

    env = {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "MY_AK": "ak2", "MY_SK": "sk2"}
    assert credentials(BackupTarget(name="t", kind="s3", access_key="a", secret_key="s"), env) == ("a", "s")
    assert credentials(BackupTarget(name="t", kind="s3", access_key_env="MY_AK", secret_key_env="MY_SK"), env) \
        == ("ak2", "sk2")
    assert credentials(BackupTarget(name="t", kind="s3"), env) == ("ak", "sk")


def test_an_s3_target_without_boto3_is_one_clear_line(tmp_path):
    """kvmkit imports boto3 only for S3 targets; with it unimportable, the target says what to install."""
    code = f"""
import sys
sys.modules["boto3"] = None  # as on a host without boto3
from pathlib import Path
from kvmkit.backup.targets import open_target
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import EnvironmentProblem
try:
    open_target(Settings(state_dir=Path({str(tmp_path)!r}), backup_targets=[BackupTarget(
        name="s3", kind="s3", endpoint="http://127.0.0.1:9", bucket="b", access_key="A", secret_key="S")]))
except EnvironmentProblem as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == ("backup target s3 is an S3 target and boto3 is not installed: "
                                  "pip install 'kvmkit[s3]' (or apt-get install python3-boto3)"), out.stderr


def test_state_files_on_the_target_are_private(tmp_path, settings):
    a = sparse_file(tmp_path / "a", MiB, [(0, b"x")])
    backup_snapshot(settings, file_snapshot("s1", {"vda": a}))
    for path in settings.backup_targets[0].path.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path


@pytest.fixture()
def small_target(tmp_path):
    """A 4 MiB tmpfs as the target, so the disk really fills up mid-backup."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_target_full_mid_backup_is_a_clear_error_and_the_retry_resumes(tmp_path, small_target):
    from kvmkit.config import BackupTarget, Settings

    settings = Settings(state_dir=tmp_path / "state", backup_targets=[BackupTarget(name="small", path=small_target)])
    a = sparse_file(tmp_path / "a", 8 * MiB, [(0, randbytes(6 * MiB))])
    with pytest.raises(OperationFailed, match=r"backup target small is full .* the backup is not recorded, a rerun "
                                              r"after freeing space resumes it"):
        backup_snapshot(settings, file_snapshot("s1", {"vda": a}))
    assert manage.list_backups(settings)[0] == []
    assert not list(small_target.rglob("*.tmp"))  # no half-written chunk left behind
    stored = {p.name for p in (small_target / "chunks").rglob("*") if p.is_file()}
    assert 0 < len(stored) < 6
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_target)], check=True)
    m = backup_snapshot(settings, file_snapshot("s1", {"vda": a}))
    assert m.disks[0].new_chunks == 6 - len(stored)  # resumed: the chunks stored before were not written again
    assert restore.verify(settings, "vm1").ok
