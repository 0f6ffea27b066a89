"""`backup mount` opens the mount point once (O_NOFOLLOW) and mounts and unmounts on that fd: a symlink put in
its place is refused, never followed, and the supervisor's clean-up unmounts only a kvmkit mount on that folder."""

from __future__ import annotations

import subprocess

from kvmkit.backup.create import backup_snapshot
from kvmkit.backup.mount import MountPoint, is_mounted
from tests.backup.conftest import MiB, file_snapshot, randbytes, sparse_file
from tests.backup.test_mount import KVMKIT, config_file


def test_a_symlinked_mount_point_is_refused_and_its_target_untouched(tmp_path, settings):
    backup_snapshot(settings, file_snapshot("s1", {"vda": sparse_file(tmp_path / "a", 4 * MiB,
                                                                       [(0, randbytes(MiB))])}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "m"
    link.symlink_to(elsewhere)
    out = subprocess.run([*KVMKIT, "backup", "mount", "vm1", "s1", str(link)], env=config_file(tmp_path, settings),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == f"kvmkit: error: mount point {link} is not a folder"
    assert not is_mounted(elsewhere) and not any(elsewhere.iterdir())


def test_the_clean_up_unmounts_only_a_kvmkit_mount_on_the_opened_folder(tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    where = MountPoint.open(mnt)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "not-kvmkit", str(mnt)], check=True)
        try:
            assert not where.mounted()  # a mount, but not kvmkit's
            where.unmount()
            assert is_mounted(mnt)  # left alone
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        where.close()
