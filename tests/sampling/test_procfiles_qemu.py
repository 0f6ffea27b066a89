"""The shared kernel-file helpers and the QEMU scan, on real files: a folder laid out like /proc, and this
process's own /proc entries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kvmkit.sampling.procfiles import CgroupMounts, KeptFiles, proc_cgroup, read_large, read_small
from kvmkit.sampling.qemu import QEMU_COMM, ProcessNames

MOUNTS = """cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
"""


def test_cgroup_mounts_and_membership_are_read_per_controller():
    cpu = CgroupMounts.from_mounts(MOUNTS, "cpu")
    assert cpu == CgroupMounts("/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu,cpuacct")
    assert CgroupMounts.from_mounts(MOUNTS, "memory").v1 == "/sys/fs/cgroup/memory"
    assert CgroupMounts.from_mounts("proc /proc proc rw 0 0\n", "memory") == CgroupMounts(None, None)
    text = "5:memory:/machine/vm1\n3:cpu,cpuacct:/machine/vm1/vcpu0\n0::/machine.slice/vm1/emulator\n"
    assert proc_cgroup(text, "cpu") == ("/machine.slice/vm1/emulator", "/machine/vm1/vcpu0")
    assert proc_cgroup(text, "memory") == ("/machine.slice/vm1/emulator", "/machine/vm1")
    assert proc_cgroup(text, "io") == ("/machine.slice/vm1/emulator", None)


def test_kept_files_reread_with_pread_follow_what_is_read_and_stay_within_budget(tmp_path: Path):
    files = [tmp_path / f"f{i}" for i in range(3)]
    for i, path in enumerate(files):
        path.write_text(f"v{i}")
    kept = KeptFiles(budget=2)
    assert [kept.read(str(p)) for p in files] == ["v0", "v1", "v2"]
    assert len(kept) == 2  # the third was read the plain way: the budget is full
    files[0].write_text("new")  # a kept descriptor sees the file as it is now (procfs regenerates at offset 0)
    assert kept.read(str(files[0])) == "new"
    kept.prune()  # everything was read since the last prune: all kept
    assert len(kept) == 2
    kept.read(str(files[1]))
    kept.prune()  # f0 was not read this round: its descriptor is closed
    assert len(kept) == 1
    assert kept.read(str(files[2]), keep=False) == "v2" and len(kept) == 1
    kept.close()
    assert len(kept) == 0


def test_a_kept_descriptor_of_a_task_that_exits_fails_and_is_dropped():
    release, hold = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives until the parent closes its end of the pipe
        os.close(hold)
        os.read(release, 1)
        os._exit(0)
    os.close(release)
    kept = KeptFiles(budget=8)
    try:
        path = f"/proc/{pid}/stat"
        assert kept.read(path).startswith(f"{pid} (") and len(kept) == 1
        os.close(hold)
        os.waitpid(pid, 0)
        with pytest.raises(OSError):
            kept.read(path)
        assert len(kept) == 0
    finally:
        kept.close()


def test_read_small_and_read_large_bound_what_they_read(tmp_path: Path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * (3 << 20))
    assert len(read_small(str(big))) == 65536
    assert len(read_large(str(big))) == 3 << 20
    assert len(read_large(str(big), limit=1 << 20)) == 1 << 20


def _proc(tmp_path: Path, processes: dict[int, tuple[str, str | None]]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    for pid, (comm, exe) in processes.items():
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "comm").write_text(comm + "\n")
        if exe:
            (proc / str(pid) / "exe").symlink_to(f"/usr/bin/{exe}")
    return proc


def test_process_names_are_read_once_and_a_reused_pid_is_looked_at_afresh(tmp_path: Path):
    proc = _proc(tmp_path, {10: ("qemu-system-x86", None), 11: ("vm-renamed", "qemu-system-x86_64"),
                            12: ("bash", "bash"), 13: ("kworker/0:1", None)})  # fmt: skip
    names = ProcessNames(str(proc))
    scan = names.scan()
    assert scan.qemu == [10, 11] and scan.others == {12: "bash", 13: "kworker/0:1"} and scan.gone == []
    assert names.comm(11) == QEMU_COMM  # renamed with -name process=…, known by its exe
    (proc / "10" / "comm").write_text("changed\n")
    assert names.scan().qemu == [10, 11]  # cached: the same /proc/10 (same inode) is the same process
    shutil.rmtree(proc / "12")
    (tmp_path / "reused").mkdir()  # made while /proc/10 still exists: certainly another inode
    (tmp_path / "reused" / "comm").write_text("sshd\n")
    shutil.rmtree(proc / "10")
    (tmp_path / "reused").rename(proc / "10")  # pid 10 reused by another process
    scan = names.scan()
    assert scan.qemu == [11] and scan.others == {10: "sshd", 13: "kworker/0:1"} and sorted(scan.gone) == [10, 12]
    assert names.comm(12) is None
