"""Dirty bitmaps of file disks without reflink: the naming and trust rules (pure), and reading a real bitmap from
a real QEMU NBD export (qemu-nbd serving a qcow2 whose persistent bitmap qemu-io dirtied)."""

from __future__ import annotations

import random
import subprocess
import time

import pytest

from kvmkit.snapshot.drivers.file import bitmap_export, bitmaps
from kvmkit.snapshot.drivers.file.bitmaps import Bitmap, NodeBitmaps, ReadRefused

MiB = 1 << 20


def test_names_carry_the_snapshot_and_the_one_it_followed():
    assert bitmaps.name_for("s2", "s1") == "kvmkit-s2/s1" and bitmaps.name_for("s1", None) == "kvmkit-s1"
    assert bitmaps.parse("kvmkit-s2/s1") == Bitmap("kvmkit-s2/s1", "s2", "s1")
    assert bitmaps.parse("kvmkit-s1") == Bitmap("kvmkit-s1", "s1", None)
    assert bitmaps.parse("backup-s1") is None and bitmaps.parse("kvmkit-") is None  # not kvmkit's: never touched
    assert bitmaps.tag_in("/p/d.img@s1.kvmkit", "/p/d.img") == "s1"
    assert bitmaps.tag_in("/p/other.img@s1.kvmkit", "/p/d.img") is None  # another disk's snapshot


def test_granularity_is_4k_until_the_bitmap_would_pass_2_mib():
    assert bitmaps.granularity_for(10 << 30) == 4096
    assert bitmaps.granularity_for(64 << 30) == 4096
    assert bitmaps.granularity_for((64 << 30) + 1) == 8192
    assert bitmaps.granularity_for(1 << 40) == 65536


def node(*found: Bitmap, size: int = 64 * MiB) -> NodeBitmaps:
    return NodeBitmaps("libvirt-1-format", size, list(found))


def test_the_barrier_stops_the_recording_bitmap_and_names_it_as_predecessor():
    stale, actions = bitmaps.plan_barrier(node(Bitmap("kvmkit-s1", "s1", None, recording=True)), "s2", "raw")
    assert stale == []
    assert actions == [
        {"type": "block-dirty-bitmap-disable", "data": {"node": "libvirt-1-format", "name": "kvmkit-s1"}},
        {"type": "block-dirty-bitmap-add", "data": {"node": "libvirt-1-format", "name": "kvmkit-s2/s1",
                                                    "granularity": 4096, "persistent": False, "disabled": False}}]


def test_the_barrier_on_qcow2_is_persistent_and_a_leftover_of_the_same_name_goes_first():
    stale, actions = bitmaps.plan_barrier(node(Bitmap("kvmkit-s2", "s2", None, recording=True)), "s2", "qcow2")
    assert stale == ["kvmkit-s2"]
    assert [a["type"] for a in actions] == ["block-dirty-bitmap-add"]
    assert actions[0]["data"]["persistent"] is True and actions[0]["data"]["name"] == "kvmkit-s2"


def test_two_recording_bitmaps_are_both_stopped_and_neither_is_trusted_as_predecessor():
    stale, actions = bitmaps.plan_barrier(node(Bitmap("kvmkit-a", "a", None, recording=True),
                                               Bitmap("kvmkit-b", "b", None, recording=True)), "c", "raw")
    assert stale == [] and [a["data"]["name"] for a in actions] == ["kvmkit-a", "kvmkit-b", "kvmkit-c"]


@pytest.mark.parametrize(("present", "why"), [
    ((Bitmap("kvmkit-s2/s1", "s2", "s1", recording=True),), "gone"),  # VM restarted: s1's bitmap lost
    # s2 deleted (its bitmap with it): s1's covers only s1 → s2, and s3's says it followed s2
    ((Bitmap("kvmkit-s1", "s1", None), Bitmap("kvmkit-s3/s2", "s3", "s2", recording=True)), "does not lead back"),
    # s3 followed nothing (a restart in between): s1's bitmap is no part of its history
    ((Bitmap("kvmkit-s1", "s1", None), Bitmap("kvmkit-s3", "s3", None, recording=True)), "does not lead back"),
    ((Bitmap("kvmkit-s1", "s1", None, inconsistent=True), Bitmap("kvmkit-s3/s1", "s3", "s1")), "inconsistent"),
    ((Bitmap("kvmkit-s1", "s1", None, recording=True), Bitmap("kvmkit-s3/s1", "s3", "s1")), "still recording"),
    ((Bitmap("kvmkit-s1", "s1", None, granularity=8192), Bitmap("kvmkit-s2/s1", "s2", "s1"),
      Bitmap("kvmkit-s3/s2", "s3", "s2")), "granularities"),
])
def test_bitmaps_are_trusted_only_along_an_unbroken_chain_of_predecessors(present, why):
    with pytest.raises(ReadRefused, match=why):
        bitmaps.trusted_chain(node(*present), "s3", "s1")


def test_the_chain_crosses_snapshots_that_were_not_backed_up():
    s1, s2 = Bitmap("kvmkit-s1", "s1", None), Bitmap("kvmkit-s2/s1", "s2", "s1")
    s3 = Bitmap("kvmkit-s3/s2", "s3", "s2", recording=True)
    unrelated = Bitmap("kvmkit-x", "x", None)
    assert bitmaps.trusted_chain(node(s1, s2, s3, unrelated), "s3", "s2") == [s2]
    assert bitmaps.trusted_chain(node(s1, s2, s3, unrelated), "s3", "s1") == [s1, s2]


def test_dirty_ranges_are_read_from_a_real_nbd_export_with_the_bitmap(tmp_path):
    """qemu-io writes scattered 4 KiB blocks into a qcow2 with an enabled persistent bitmap; qemu-nbd exports it
    with that bitmap; the ranges read back are exactly the written blocks (adjacent ones merged)."""
    image, sock = tmp_path / "d.qcow2", tmp_path / "nbd.sock"
    size = 256 * MiB
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(size)], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", "-g", "4096", str(image), "kvmkit-s1"], check=True)
    rng = random.Random(16)
    blocks = sorted(set(rng.randrange(size // 4096) for _ in range(300)) | {7, 8, 9})  # 7-9: one merged run
    script = [arg for b in blocks for arg in ("-c", f"write -P 1 {b * 4096} 4096")]
    subprocess.run(["qemu-io", "-f", "qcow2", *script, str(image)], check=True, capture_output=True)
    proc = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", "-f", "qcow2", "-k", str(sock),
                             "-x", "exp", "-B", "kvmkit-s1", str(image)])
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        got = bitmap_export.dirty_ranges(str(sock), "exp", "kvmkit-s1", size)
    finally:
        proc.terminate()
        proc.wait()
    want: list[tuple[int, int]] = []
    for b in blocks:
        if want and want[-1][0] + want[-1][1] == b * 4096:
            want[-1] = (want[-1][0], want[-1][1] + 4096)
        else:
            want.append((b * 4096, 4096))
    assert got == want and (7 * 4096, 3 * 4096) in got
