"""Restore targets: a defined VM's disk is refused whatever path names it; temp files are O_EXCL beside the
destination; block devices are written in place or refused; a multi-disk restore swaps all or none; holes stay
holes (issue 15 items 2, 4, 5, 6; issue 16 item 3)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmkit.backup import restore, restore_targets
from kvmkit.backup.create import backup_snapshot
from kvmkit.errors import Conflict, InvalidInput, OperationFailed
from tests.backup.conftest import MiB, file_snapshot, randbytes, sha, sparse_file

DOMAIN = """<node><domain type='test'><name>{name}</name><memory>8192</memory>
<os><type>hvm</type></os><devices>
<disk type='file' device='disk'><source file='{disk}'/><target dev='vda'/></disk>
</devices></domain></node>"""


def test_domain_disk_sources_include_read_only_and_backing_files():
    xml = """<domain><devices>
      <disk type='file'><source file='/a.qcow2'/><backingStore type='file'><source file='/base.raw'/>
      </backingStore><target dev='vda'/></disk>
      <disk type='block' device='disk'><source dev='/dev/sdb'/><readonly/><target dev='vdb'/></disk>
      <disk type='network'><source protocol='rbd' name='rbd/img'/><target dev='vdc'/></disk>
    </devices></domain>"""
    assert restore_targets.domain_disk_sources(xml) == [("vda", "/a.qcow2"), ("vda", "/base.raw"),
                                                        ("vdb", "/dev/sdb"), ("vdc", "rbd/img")]


def backup_of(tmp_path, settings, disks: dict[str, Path]):
    return backup_snapshot(settings, file_snapshot("s1", disks))


@pytest.mark.parametrize("alias", ["dot", "symlink", "hardlink"])
def test_a_defined_vms_disk_is_refused_by_any_alias(tmp_path, settings, alias):
    """Issue 15 repro 2: `--to vda=$POOL/./vm-vda.raw --force` replaced a running disk."""
    src = sparse_file(tmp_path / "src.raw", 4 * MiB, [(0, randbytes(MiB))])
    backup_of(tmp_path, settings, {"vda": src})
    pool = tmp_path / "pool"
    pool.mkdir()
    live = pool / "vm-vda.raw"
    live.write_bytes(b"live disk")
    if alias == "dot":
        given = f"{pool}/./vm-vda.raw"
    elif alias == "symlink":
        (tmp_path / "link").symlink_to(live)
        given = str(tmp_path / "link")
    else:
        os.link(live, tmp_path / "hard")
        given = str(tmp_path / "hard")
    node = tmp_path / "node.xml"
    node.write_text(DOMAIN.format(name="guest1", disk=live))
    s = settings.model_copy(update={"libvirt_uri": f"test://{node}"})
    with pytest.raises(Conflict, match="is disk vda of VM guest1; it is not shut off") as info:
        restore.restore(s, "vm1", "s1", to=[given], replace=True)
    assert "\n" not in str(info.value)
    assert live.read_bytes() == b"live disk"
    assert not [p for p in pool.iterdir() if p.name != "vm-vda.raw"]


def test_restore_without_to_writes_only_onto_the_backed_up_vms_own_disks(tmp_path, settings):
    """The manifest's source is untrusted: without --to, a restore goes only where this host's definition of the
    same VM (by UUID) has that disk — and then only under the defined-VM rules (issue 15 item 2)."""
    # a repository without keys (format 1), where a manifest can be edited at all: keyed ones refuse it unopened
    (settings.backup_targets[0].path / "kvmkit-backup.json").write_text('{"format": 1, "tool": "kvmkit"}')
    src = sparse_file(tmp_path / "src.raw", 4 * MiB, [(0, randbytes(MiB))])
    manifest = backup_of(tmp_path, settings, {"vda": src})
    source = Path(manifest.disks[0].source)
    evil = tmp_path / "cron.d" / "evil"  # what a tampered manifest could name: a file root would run
    evil.parent.mkdir()
    path = settings.backup_targets[0].path / "manifests" / manifest.vm_uuid / "s1.json"
    path.write_text(path.read_text().replace(str(source), str(evil)))
    with pytest.raises(InvalidInput, match=r"not a disk of VM vm1 .* on this host; to restore there, say so: --to"):
        restore.restore(settings, "vm1", "s1", replace=True)
    assert not evil.exists()
    path.write_text(path.read_text().replace(str(evil), str(source)))
    source.write_bytes(b"in use")
    other = tmp_path / "other.xml"  # a domain with that disk, but another VM: still not vm1's own disk
    other.write_text(DOMAIN.format(name="guest1", disk=source))
    with pytest.raises(InvalidInput, match="not a disk of VM vm1"):
        restore.restore(settings.model_copy(update={"libvirt_uri": f"test://{other}"}), "vm1", "s1", replace=True)
    own = tmp_path / "own.xml"  # vm1 itself, running: refused by the defined-VM rule
    own.write_text(DOMAIN.format(name="vm1", disk=source).replace("<memory>",
                                                                  f"<uuid>{manifest.vm_uuid}</uuid><memory>"))
    with pytest.raises(Conflict, match="is disk vda of VM vm1; it is not shut off"):
        restore.restore(settings.model_copy(update={"libvirt_uri": f"test://{own}"}), "vm1", "s1", replace=True,
                        force_offline=True)
    assert source.read_bytes() == b"in use"
    restore.restore(settings, "vm1", "s1", to=[f"vda={source}"], replace=True)  # said explicitly: allowed
    assert sha(source) == sha(src)


def test_a_planted_symlink_at_a_temp_name_is_never_followed(tmp_path, settings):
    """Issue 15 repro 4: `<dest>.kvmkit-restore` as a symlink was followed and its target overwritten."""
    src = sparse_file(tmp_path / "src.raw", 4 * MiB, [(0, randbytes(MiB))])
    backup_of(tmp_path, settings, {"vda": src})
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("dest.kvmkit-restore", ".dest.kvmkit-restore", "dest.raw.kvmkit-restore"):
        (out / name).symlink_to(victim)
    restore.restore(settings, "vm1", "s1", to=[str(out / "dest.raw")])
    assert victim.read_bytes() == b"keep me" and sha(out / "dest.raw") == sha(src)


def test_multi_disk_restore_is_all_or_none_and_leaves_no_temp_files(tmp_path, settings):
    """Issue 15 repro 5: vda replaced, then vdb failed, temp files left."""
    a = sparse_file(tmp_path / "a.raw", 4 * MiB, [(0, randbytes(MiB))])
    b = sparse_file(tmp_path / "b.raw", 4 * MiB, [(MiB, randbytes(MiB))])
    manifest = backup_of(tmp_path, settings, {"vda": a, "vdb": b})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(b"old a")
    (out / "b").write_bytes(b"old b")
    digest = manifest.disks[1].chunks[0][1]
    chunk = settings.backup_targets[0].path / "chunks" / digest[:2] / digest
    chunk.write_bytes(chunk.read_bytes()[:-10])  # vdb's chunk is damaged: vda is written first, then vdb fails
    with pytest.raises(OperationFailed, match="is damaged"):
        restore.restore(settings, "vm1", "s1", to=[f"vda={out / 'a'}", f"vdb={out / 'b'}"], replace=True)
    assert (out / "a").read_bytes() == b"old a" and (out / "b").read_bytes() == b"old b"
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]


def test_a_failed_rename_puts_every_swapped_disk_back(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    staged = []
    for name in ("a", "b"):
        (folder / name).write_bytes(b"old " + name.encode())
        dest = restore_targets.resolve(name, str(folder / name))
        item = restore_targets.StagedFile(dest, True, 4)
        os.write(item.open(), b"new!")
        item.finish()
        staged.append(item)
    os.unlink(staged[1].tmp, dir_fd=staged[1].folder_fd)  # the second rename will fail
    with pytest.raises(OperationFailed, match="put back"):
        restore_targets.swap_all(staged)
    for item in staged:
        item.cleanup()
    assert (folder / "a").read_bytes() == b"old a" and (folder / "b").read_bytes() == b"old b"
    assert sorted(p.name for p in folder.iterdir()) == ["a", "b"]


def test_restore_keeps_holes_and_resolves_a_shared_chunk_once(tmp_path, settings, monkeypatch):
    same = randbytes(MiB)
    half = randbytes(8192) + bytes(MiB - 16384) + randbytes(8192)  # zero 4 KiB blocks inside a data chunk
    src = sparse_file(tmp_path / "src.raw", 64 * MiB, [(0, same), (8 * MiB, same), (20 * MiB, same), (40 * MiB, half)])
    backup_of(tmp_path, settings, {"vda": src})
    from kvmkit.backup.store import ChunkStore

    reads: list[str] = []
    original = ChunkStore.read_chunk

    def counting(self, digest, *args, **kwargs):
        reads.append(digest)
        return original(self, digest, *args, **kwargs)
    monkeypatch.setattr(ChunkStore, "read_chunk", counting)
    out = tmp_path / "out.raw"
    result = restore.restore(settings, "vm1", "s1", to=[str(out)])
    assert sha(out) == sha(src)
    assert len(reads) == 2  # the chunk at three places is read and decoded once
    assert os.stat(out).st_blocks * 512 <= os.stat(src).st_blocks * 512  # as sparse as the source
    assert result.disks[0].written_bytes == 3 * MiB + 16384  # data blocks written, at every place


def test_a_fifo_or_folder_destination_is_refused(tmp_path, settings):
    src = sparse_file(tmp_path / "src.raw", 4 * MiB, [(0, randbytes(MiB))])
    backup_of(tmp_path, settings, {"vda": src})
    os.mkfifo(tmp_path / "fifo")
    for dest in (tmp_path / "fifo", tmp_path):
        with pytest.raises(InvalidInput, match="not a regular file or a block device"):
            restore.restore(settings, "vm1", "s1", to=[str(dest)], replace=True)


@pytest.fixture()
def loop_device(tmp_path):
    backing = tmp_path / "loop.img"
    with backing.open("wb") as fh:
        fh.write(b"\xaa" * (8 * MiB))
    try:
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the lab needs loop devices (losetup): {exc}")
    yield Path(dev)
    subprocess.run(["losetup", "-d", dev], check=False)


def test_a_block_device_is_written_in_place_with_its_holes_zeroed_or_refused(tmp_path, settings, loop_device):
    """Issue 15 repro 6: restore onto a block device replaced the device node with a regular file."""
    src = sparse_file(tmp_path / "src.raw", 4 * MiB, [(MiB, randbytes(MiB))])
    backup_of(tmp_path, settings, {"vda": src})
    with pytest.raises(Conflict, match="block device holding data; pass --force"):
        restore.restore(settings, "vm1", "s1", to=[str(loop_device)])
    restore.restore(settings, "vm1", "s1", to=[str(loop_device)], replace=True)
    assert loop_device.is_block_device()
    with loop_device.open("rb") as fh:
        content = fh.read(8 * MiB)
    assert content[:4 * MiB] == src.read_bytes()  # the old 0xaa bytes in the holes were zeroed
    assert content[4 * MiB:] == b"\xaa" * (4 * MiB)  # past the disk: untouched
    big = sparse_file(tmp_path / "big.raw", 16 * MiB, [(0, b"x")])
    backup_snapshot(settings, file_snapshot("s2", {"vda": big}, when=__import__("datetime").datetime.now()))
    with pytest.raises(InvalidInput, match="needs 16777216"):
        restore.restore(settings, "vm1", "s2", to=[str(loop_device)], replace=True)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(min_value=1, max_value=3 * 4096 + 17),
       marks=st.lists(st.integers(min_value=0, max_value=3 * 4096 + 16), max_size=8))
def test_data_runs_are_exactly_the_non_zero_blocks(size, marks):
    from kvmkit.backup.restore_writer import BLOCK, data_runs

    raw = bytearray(size)
    for mark in marks:
        if mark < size:
            raw[mark] = 1
    runs = data_runs(memoryview(bytes(raw)))
    covered = bytearray(size)
    for start, end in runs:
        assert start % BLOCK == 0 and start < end <= size
        covered[start:end] = raw[start:end]
    assert covered == raw  # every non-zero byte is inside a run
    blocks_in_runs = sum((end - start + BLOCK - 1) // BLOCK for start, end in runs)
    assert blocks_in_runs == sum(1 for b in range(0, size, BLOCK) if any(raw[b: b + BLOCK]))  # and no zero block


KILL_CHILD = """
import sys
from pathlib import Path
from kvmkit.backup import restore
from kvmkit.config import BackupTarget, Settings
root, out, state = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
settings = Settings(state_dir=state, libvirt_uri="test:///default",
                    backup_targets=[BackupTarget(name="t1", path=root)])
restore.restore(settings, "vm1", "s1", to=[f"vda={out / 'a'}", f"vdb={out / 'b'}"], replace=True)
"""


@pytest.mark.parametrize("step", ["restore-before-swap", "restore-mid-swap"])
def test_kill_9_during_restore_leaves_no_partial_disk_and_the_rerun_cleans_up(tmp_path, settings, step):
    import sys

    a = sparse_file(tmp_path / "a.raw", 4 * MiB, [(0, randbytes(MiB))])
    b = sparse_file(tmp_path / "b.raw", 4 * MiB, [(MiB, randbytes(MiB))])
    backup_of(tmp_path, settings, {"vda": a, "vdb": b})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(b"old a")
    (out / "b").write_bytes(b"old b")
    child = subprocess.run([sys.executable, "-c", KILL_CHILD, str(settings.backup_targets[0].path), str(out),
                            str(settings.state_dir)],
                           env={**os.environ, "KVMKIT_FAILPOINT": step}, capture_output=True, timeout=60)
    assert child.returncode == -9
    contents = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    if step == "restore-before-swap":  # nothing swapped: both destinations are exactly as they were
        assert contents == {"a": b"old a", "b": b"old b"}
    else:  # killed after vda's rename: vda is whole and new, vdb old, and vda's old data is kept aside
        assert contents["a"] == a.read_bytes() and contents["b"] == b"old b"
        assert [p.read_bytes() for p in out.iterdir() if ".kvmkit-old-" in p.name] == [b"old a"]
    restore.restore(settings, "vm1", "s1", to=[f"vda={out / 'a'}", f"vdb={out / 'b'}"], replace=True)
    assert sha(out / "a") == sha(a) and sha(out / "b") == sha(b)
    extra = [p.name for p in out.iterdir() if p.name not in ("a", "b")]
    # the temp files of the killed run are gone; only a replaced disk's sole copy stays, for the operator
    if step == "restore-before-swap":
        assert extra == []
    else:
        assert len(extra) == 1 and extra[0].startswith(".a.kvmkit-old-") and (out / extra[0]).read_bytes() == b"old a"
