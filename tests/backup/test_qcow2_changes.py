"""Changed guest ranges of two reflink snapshots of a qcow2 top file: never missing a changed guest byte, reporting
little more than the touched clusters, and refusing (None) whatever it cannot vouch for."""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmkit.backup import qcow2_changes, qcow2_map
from kvmkit.backup.qcow2_changes import MapEntry, Untrusted, compare, compare_maps, host_to_guest, parse_map
from tests.fixtures.loopfs import loop_fs

B = 4096
C = 65536  # qcow2's default cluster size
MiB = 1 << 20


# pure: the map lines ----------------------------------------------------------------------------------------
QEMU_7_2_MAP = (  # what qemu-img 7.2 printed for an overlay on a template
    b"""[{ "start": 0, "length": 1048576, "depth": 1, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 1048576, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 1179648, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 1245184, "length": 15532032, "depth": 1, "present": false, "zero": true, "data": false}]
""")


def test_qemu_img_map_lines_are_parsed_one_entry_a_line():
    entries = list(parse_map(QEMU_7_2_MAP.splitlines(keepends=True)))
    assert [(e.start, e.length, e.depth, e.zero, e.data, e.offset) for e in entries] == [
        (0, MiB, 1, False, True, 327680), (MiB, 131072, 0, False, True, 327680), (1179648, C, 0, True, False, None),
        (1245184, 15532032, 1, True, False, None)]
    one_line = b'[{ "start": 0, "length": 0, "depth": 0, "present": false, "zero": false, "data": false}]\n'
    assert [e.length for e in parse_map([one_line])] == [0]  # a 0-byte image


@pytest.mark.parametrize("lines, reason", [
    ([b'{ "start": 0, "length": 1, "depth": 0, "present": true, "zero": true, "data": false}]\n'], "not a JSON map"),
    ([b'[{ "start": 0, "length": 1, "depth": 0, "present": true, "zero": true, "data": false, "new": 1}]\n'],
     "not a map entry"),
    ([b'[{ "start": "0", "length": 1, "depth": 0, "present": true, "zero": true, "data": false}]\n'],
     "not a map entry"),
    ([b'[{ "start": 0, "length": -1, "depth": 0, "present": true, "zero": true, "data": false}]\n'],
     "not a map entry"),
    ([b"[" + b" " * qcow2_map.MAX_LINE], "longer than"),
])
def test_a_map_line_that_is_not_a_known_entry_is_untrusted(lines, reason):
    with pytest.raises(Untrusted, match=reason):
        list(parse_map(lines))


# pure: the two maps -----------------------------------------------------------------------------------------
def E(start: int, length: int, kind: str, offset: int | None = None, depth: int = 0) -> MapEntry:
    """A map entry by what it reads: top (data at offset), zero, backing (depth > 0), hole (unallocated, zero)."""
    if kind == "top":
        return MapEntry(start=start, length=length, depth=0, present=True, zero=False, data=True, offset=offset)
    if kind == "zero":
        return MapEntry(start=start, length=length, depth=0, present=True, zero=True, data=False, offset=offset)
    if kind == "backing":
        return MapEntry(start=start, length=length, depth=depth or 1, present=True, zero=False, data=True,
                        offset=offset)
    return MapEntry(start=start, length=length, depth=depth, present=False, zero=True, data=False)


def test_the_maps_say_what_moved_and_leave_same_host_mappings_to_fiemap():
    old = [E(0, 2 * C, "backing", 0), E(2 * C, 2 * C, "top", 10 * C), E(4 * C, C, "hole", depth=1),
           E(5 * C, 3 * C, "backing", 5 * C)]
    new = [E(0, C, "backing", 0), E(C, 2 * C, "top", 9 * C),  # guest cluster 1 newly allocated, 2 same host
           E(3 * C, C, "top", 20 * C),  # guest cluster 3 moved to another host cluster
           E(4 * C, C, "zero"), E(5 * C, 3 * C, "backing", 5 * C, depth=2)]  # a zeroed hole; the chain either way
    assert list(compare_maps(old, new, 8 * C)) == [(C, C, -1), (2 * C, C, 10 * C), (3 * C, C, -1)]


@pytest.mark.parametrize("entry", [MapEntry(start=0, length=C, depth=0, present=True, zero=False, data=True),
                                   MapEntry(start=0, length=C, depth=0, present=True, zero=False, data=True,
                                            offset=C, compressed=True)])
def test_a_top_cluster_without_a_plain_host_offset_is_untrusted(entry):
    """QEMU 7.2 omits the offset of compressed (and encrypted) clusters; QEMU 8.2 also says compressed."""
    with pytest.raises(Untrusted, match="compressed"):
        list(compare_maps([entry], [entry], C))
    backing = entry.model_copy(update={"depth": 1})
    assert list(compare_maps([backing], [backing], C)) == []  # a compressed template is fine


@pytest.mark.parametrize("entries", [[E(0, C, "top", 0), E(2 * C, C, "top", C)], [E(0, C, "top", 0)],
                                     [E(0, 3 * C, "top", 0)], [E(0, C, "top", 0), E(C - 1, 2 * C + 1, "zero")]])
def test_a_map_with_gaps_overlaps_or_the_wrong_length_is_untrusted(entries):
    with pytest.raises(Untrusted):
        list(compare_maps(entries, [E(0, 2 * C, "zero")], 2 * C))


KINDS = st.sampled_from(["top", "top", "zero", "backing", "hole", "other"])


def _expand(kinds: list[tuple[str, int]]) -> list[MapEntry]:
    """Cluster kinds → map entries, adjacent same-kind clusters merged as qemu-img does."""
    out: list[MapEntry] = []
    for index, (kind, host) in enumerate(kinds):
        if kind == "other":  # allocated in the top file, neither data nor zero: never taken as unchanged
            entry = MapEntry(start=index * C, length=C, depth=0, present=True, zero=False, data=False)
        else:
            entry = E(index * C, C, kind, host * C if kind in ("top", "backing") else None)
        last = out[-1] if out else None
        if (last is not None and last.depth == entry.depth and last.zero == entry.zero and last.data == entry.data
                and last.present == entry.present
                and (last.offset is None) == (entry.offset is None)
                and (last.offset is None or last.offset + last.length == entry.offset)):
            out[-1] = last.model_copy(update={"length": last.length + C})
        else:
            out.append(entry)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KINDS, st.integers(0, 6), KINDS, st.integers(0, 6)), min_size=1, max_size=40))
def test_the_streamed_map_merge_is_a_cluster_by_cluster_comparison(clusters):
    old = _expand([(ka, ha) for ka, ha, _, _ in clusters])
    new = _expand([(kb, hb) for _, _, kb, hb in clusters])
    expected = {}
    for index, (ka, ha, kb, hb) in enumerate(clusters):
        if ka == kb == "top":
            expected[index] = hb * C if ha == hb else -1
        elif (ka in ("zero", "hole") and kb in ("zero", "hole")) or ka == kb == "backing":
            continue
        else:
            expected[index] = -1
    got = {}
    for guest, length, host in compare_maps(old, new, len(clusters) * C):
        assert guest % C == 0 and length % C == 0 and length > 0
        for k in range(length // C):
            assert guest // C + k not in got
            got[guest // C + k] = host + k * C if host >= 0 else -1
    assert got == expected


# pure: host ranges back to guest ranges ---------------------------------------------------------------------
def test_rewritten_host_bytes_become_guest_ranges_in_guest_order():
    top = np.array([[8 * C, 0, C], [0, C, C], [4 * C, 2 * C, 2 * C]], dtype=np.int64)  # guest, host, length
    host_changes = np.array([[B, B], [C - B, 2 * B], [3 * C, 10 * C]], dtype=np.int64)
    assert host_to_guest(top, host_changes).tolist() == [[0, B], [5 * C, C], [8 * C + B, B], [9 * C - B, B]]
    assert host_to_guest(top, np.empty((0, 2), dtype=np.int64)).tolist() == []


def test_shared_host_bytes_and_a_complete_rewrite_are_untrusted():
    shared = np.array([[0, 0, 2 * C], [4 * C, C, C]], dtype=np.int64)
    with pytest.raises(Untrusted, match="same host bytes"):
        host_to_guest(shared, np.empty((0, 2), dtype=np.int64))
    top = np.array([[0, 0, C], [4 * C, 2 * C, C]], dtype=np.int64)
    with pytest.raises(Untrusted, match="not reflink siblings"):
        host_to_guest(top, np.array([[0, 4 * C]], dtype=np.int64))


@settings(max_examples=300, deadline=None)
@given(st.permutations(range(12)), st.lists(st.booleans(), min_size=12, max_size=12),
       st.lists(st.tuples(st.integers(0, 12 * 16), st.integers(1, 20)), max_size=8))
def test_host_to_guest_is_a_block_by_block_translation(hosts, mapped, changes):
    """12 guest clusters on a permutation of 12 host clusters (some unmapped), 16 blocks a cluster, random
    changed host block runs: exactly the guest blocks whose host block changed come back."""
    blk = C // 16
    top = np.array([[g * C, h * C, C] for g, h in enumerate(hosts) if mapped[g]], dtype=np.int64).reshape(-1, 3)
    changed: set[int] = set()
    for start, count in changes:
        changed |= set(range(start, start + count))
    runs = []
    for b in sorted(changed):
        if runs and runs[-1][0] + runs[-1][1] == b * blk:
            runs[-1][1] += blk
        else:
            runs.append([b * blk, blk])
    host_of_guest = {g: h for g, h in enumerate(hosts) if mapped[g]}
    expected = {g * 16 + k for g, h in host_of_guest.items() for k in range(16) if h * 16 + k in changed}
    try:
        got = host_to_guest(top, np.array(runs, dtype=np.int64).reshape(-1, 2))
    except Untrusted:
        assert len(top) and expected == {g * 16 + k for g in host_of_guest for k in range(16)}
        return
    assert got[:, 0].tolist() == sorted(got[:, 0].tolist())
    assert {o // blk + k for o, n in got.tolist() for k in range(n // blk)} == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 30)), max_size=12), min_size=1, max_size=3))
def test_changed_and_rewritten_ranges_merge_into_sorted_disjoint_runs(tables):
    arrays = [np.array(sorted(t), dtype=np.int64).reshape(-1, 2) for t in tables]
    merged = qcow2_changes._merge(*arrays).tolist()
    assert {o + k for o, n in merged for k in range(n)} == {o + k for t in tables for o, n in t for k in range(n)}
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(merged))  # gaps between runs


def test_the_result_is_handed_out_as_python_ints_block_by_block():
    rows = np.array([[i * 3 * C, C] for i in range(10_000)], dtype=np.int64)
    result = qcow2_changes.GuestChanges(ranges=rows, virtual_size=30_000 * C, map_entries=0, top_mappings=0)
    got = list(result)
    assert got == [(i * 3 * C, C) for i in range(10_000)] and type(got[-1][0]) is int
    assert result.changed_bytes == 10_000 * C


# real qemu-img and XFS --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xfs(tmp_path_factory) -> Path:
    with loop_fs(tmp_path_factory.mktemp("qcow2xfs"), "xfs", 768) as mnt:
        yield mnt


def run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def qemu_io(image: Path, *commands: str) -> None:
    argv: list[str | Path] = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    run(*argv, image)


def reflink(src: Path, dst: Path) -> Path:
    run("cp", "--reflink=always", src, dst)
    return dst


def guest_bytes(image: Path, out: Path) -> bytes:
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, out)
    data = out.read_bytes()
    out.unlink()
    return data


def differing_blocks(a: bytes, b: bytes) -> set[int]:
    return {i // B for i in range(0, len(a), B) if a[i: i + B] != b[i: i + B]}


def covered(ranges: list[tuple[int, int]]) -> set[int]:
    return {blk for off, length in ranges for blk in range(off // B, -(-(off + length) // B))}


def clusters_of(ops: list[tuple[str, int, int]], cluster: int = C) -> set[int]:
    """The 4 KiB blocks of every qcow2 cluster an operation touched: the most a comparison may report."""
    per = cluster // B
    touched = {c for _, off, n in ops for c in range(off // cluster, -(-(off + n) // cluster))}
    return {c * per + k for c in touched for k in range(per)}


def template(root: Path, name: str = "base.qcow2", size: int = 64 * MiB) -> Path:
    """A template with data in its first 16 MiB, as a CloudStack/Nova base image."""
    base = root / name
    run("qemu-img", "create", "-q", "-f", "qcow2", base, str(size))
    qemu_io(base, "write -P 0x11 0 16M")
    return base


def overlay(root: Path, base: Path, name: str) -> Path:
    top = root / name
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    return top


def apply(top: Path, ops: list[tuple[str, int, int]], seed: int) -> None:
    commands = []
    for i, (op, off, n) in enumerate(ops):
        pattern = (seed * 31 + i) % 250 + 1
        commands.append({"write": f"write -P {pattern} {off} {n}", "zero": f"write -z {off} {n}",
                         "discard": f"discard {off} {n}"}[op])
    qemu_io(top, *commands)


@pytest.mark.lab
def test_in_place_rewrites_new_clusters_zeros_and_discards_are_found_and_little_else(xfs):
    base = template(xfs)
    top = overlay(xfs, base, "vm.qcow2")
    apply(top, [("write", 1 * MiB, MiB), ("write", 32 * MiB, 2 * MiB), ("write", 48 * MiB, MiB)], 1)
    s1 = reflink(top, xfs / "vm.s1")
    renamed = xfs / "vm-moved.qcow2"
    top.rename(renamed)  # the VM's disk moved on the same filesystem between the snapshots
    ops = [("write", MiB + 4 * B, B),  # in place, inside an allocated cluster: 4 KiB, not a cluster
           ("write", 5 * MiB, B),  # over the template: the cluster is copied up (new mapping)
           ("zero", 33 * MiB, C),  # zero an allocated cluster
           ("discard", 48 * MiB, 2 * C),  # discard allocated clusters
           ("write", 50 * MiB, 2 * B),  # a new cluster over a hole (may reuse a discarded host cluster)
           ("write", 32 * MiB + 3 * C, 3 * C)]  # in place, whole clusters
    apply(renamed, ops, 2)
    s2 = reflink(renamed, xfs / "vm.s2")

    result = compare(s1, s2, "qcow2")
    ranges = list(result)
    assert ranges == list(qcow2_changes.changed_guest_ranges(s1, s2, "qcow2"))
    old, new = guest_bytes(s1, xfs / "s1.raw"), guest_bytes(s2, xfs / "s2.raw")
    differing = differing_blocks(old, new)
    assert differing and differing <= covered(ranges) <= clusters_of(ops)
    assert (MiB + 4 * B, B) in ranges  # the in-place 4 KiB rewrite is one 4 KiB range
    print(f"\nqcow2 changes: {result.changed_bytes} bytes in {len(ranges)} ranges of a {result.virtual_size} "
          f"byte disk ({len(differing) * B} bytes differ; {result.map_entries} map entries)")
    assert result.changed_bytes <= 12 * C
    assert list(compare(s2, s2, "qcow2")) == []
    for path in (s1, s2, renamed, base):
        path.unlink()


@pytest.mark.lab
@pytest.mark.parametrize("seed, options, cluster", [
    (1, "", C), (2, "", C), (3, "", C), (4, "", C),
    (5, "extended_l2=on,cluster_size=128k", 128 * 1024),  # 32 subclusters of 4 KiB: the map is per subcluster
    (6, "preallocation=falloc", C),  # every cluster mapped up front, unwritten on the host: reads as zeros
    (7, "preallocation=metadata", C),  # every cluster mapped, the host file sparse
])
def test_random_guest_writes_between_snapshots_never_hide_a_changed_byte(xfs, seed, options, cluster):
    rng = random.Random(seed)
    size = 32 * MiB
    if options.startswith("preallocation"):  # QEMU refuses preallocation with a backing file
        base, top = None, xfs / f"r{seed}.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, top, str(size))
    else:
        base = template(xfs, f"base-{seed}.qcow2", size)
        top = xfs / f"r{seed}.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", *(["-o", options] if options else []),
            top)

    def ops(count: int) -> list[tuple[str, int, int]]:
        out = []
        for _ in range(count):
            n = rng.choice([B, 2 * B, C, 3 * C, 5 * B + C])
            out.append((rng.choice(["write", "write", "write", "zero", "discard"]), rng.randrange(0, size - n, B), n))
        return out

    apply(top, ops(40), seed)
    s1 = reflink(top, xfs / f"r{seed}.s1")
    between = ops(25)
    apply(top, between, seed + 100)
    s2 = reflink(top, xfs / f"r{seed}.s2")
    ranges = list(compare(s1, s2, "qcow2"))
    differing = differing_blocks(guest_bytes(s1, xfs / f"r{seed}.a"), guest_bytes(s2, xfs / f"r{seed}.b"))
    assert differing <= covered(ranges) <= clusters_of(between, cluster)
    for path in (s1, s2, top, base):
        if path is not None:
            path.unlink()


@pytest.mark.lab
def test_a_map_of_thousands_of_entries_in_reverse_host_order_is_exact(xfs):
    """1500 separate clusters allocated from the end of the disk backwards (host order is the reverse of guest
    order), then 300 random in-place 4 KiB rewrites: exactly those blocks come back."""
    image = xfs / "many.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", image, str(256 * MiB))
    clusters = list(range(0, 3000, 2))[::-1]
    qemu_io(image, *[f"write -P {c % 200 + 1} {c * C} {C}" for c in clusters])
    s1 = reflink(image, xfs / "many.s1")
    rng = random.Random(5)
    blocks = sorted(rng.sample([c * 16 + k for c in clusters for k in range(16)], 300))
    qemu_io(image, *[f"write -P 0xee {b * B} {B}" for b in blocks])
    s2 = reflink(image, xfs / "many.s2")
    result = compare(s1, s2, "qcow2")
    assert result.map_entries >= 2 * 3000 and result.top_mappings == 1500
    assert covered(list(result)) == set(blocks)
    for path in (s1, s2, image):
        path.unlink()


# untrusted: None, and why -----------------------------------------------------------------------------------
@pytest.fixture()
def pair(xfs, request) -> tuple[Path, Path, Path]:
    """(template, snapshot 1, live top) on the XFS: the test makes snapshot 2 its own way."""
    name = request.node.name.replace("[", "-").replace("]", "")
    base = template(xfs, f"{name}.base")
    top = overlay(xfs, base, f"{name}.qcow2")
    qemu_io(top, "write -P 0x21 0 1M")
    s1 = reflink(top, xfs / f"{name}.s1")
    qemu_io(top, "write -P 0x22 4k 4k")
    yield base, s1, top
    for path in xfs.glob(f"{name}*"):
        path.unlink()


def untrusted(older: Path, newer: Path, reason: str, fmt: str = "qcow2") -> None:
    assert qcow2_changes.changed_guest_ranges(older, newer, fmt) is None
    with pytest.raises(Untrusted, match=reason):
        compare(older, newer, fmt)


@pytest.mark.lab
def test_a_rebased_snapshot_or_a_resized_one_is_not_compared(pair, xfs):
    base, s1, top = pair
    s2 = reflink(top, top.with_suffix(".s2"))
    other = reflink(base, base.with_suffix(".other"))  # the same bytes, but another file
    run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", other, "-F", "qcow2", s2)
    untrusted(s1, s2, "backing file names")
    for folder in ("a", "b"):  # the same relative backing name, resolved next to each image: two templates
        (xfs / folder).mkdir()
        reflink(base if folder == "a" else other, xfs / folder / "t.qcow2")
        reflink(s1, xfs / folder / "s.qcow2")
        run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "t.qcow2", "-F", "qcow2", xfs / folder / "s.qcow2")
    untrusted(xfs / "a" / "s.qcow2", xfs / "b" / "s.qcow2", "other files")
    shutil.rmtree(xfs / "a")
    shutil.rmtree(xfs / "b")
    run("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "qcow2", s2)
    assert list(compare(s1, s2, "qcow2")) == [(4 * 1024, 4 * 1024)]
    run("qemu-img", "resize", "-q", "-f", "qcow2", s2, "+1M")
    untrusted(s1, s2, "virtual size changed")
    base.rename(base.with_suffix(".gone"))
    untrusted(s1, s1, "qemu-img info")


@pytest.mark.lab
def test_compressed_clusters_in_the_top_file_are_not_compared(pair):
    _, s1, top = pair
    qemu_io(top, "write -c -P 0x33 2M 64k")
    untrusted(s1, reflink(top, top.with_suffix(".s2")), "compressed")


@pytest.mark.lab
def test_copies_that_share_no_block_and_files_on_two_filesystems_are_not_compared(pair, tmp_path):
    _, s1, top = pair
    run("cp", "--reflink=never", top, top.with_suffix(".copy"))
    untrusted(s1, top.with_suffix(".copy"), "not reflink siblings")
    elsewhere = tmp_path / "s2.qcow2"
    shutil.copyfile(top, elsewhere)
    untrusted(s1, elsewhere, "different filesystems")
    (tmp_path / "s1.qcow2").write_bytes(s1.read_bytes())  # ext4 has FIEMAP but no reflink: copies share nothing
    untrusted(tmp_path / "s1.qcow2", elsewhere, "not reflink siblings")


@pytest.mark.lab
def test_a_filesystem_without_fiemap_is_not_compared(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt)
    try:
        image = mnt / "t.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", image, str(8 * MiB))
        qemu_io(image, "write -P 0x44 0 1M")
        shutil.copyfile(image, mnt / "t.s1")
        qemu_io(image, "write -P 0x45 0 4k")
        untrusted(mnt / "t.s1", image, "no FIEMAP")
    finally:
        run("umount", mnt)


@pytest.mark.lab
def test_raw_encrypted_external_data_and_symlinked_images_are_not_compared(pair, xfs):
    _, s1, top = pair
    untrusted(s1, top, "not qcow2", fmt="raw")
    raw = xfs / "plain.raw"
    raw.write_bytes(bytes(C))
    untrusted(raw, raw, "not a qcow2 image")
    forged = bytearray(s1.read_bytes()[:C])  # a raw disk whose guest wrote a qcow2 header naming a host file
    name = b"/etc/hostname"
    forged[8:20] = (512).to_bytes(8, "big") + len(name).to_bytes(4, "big")
    forged[512: 512 + len(name)] = name
    raw.write_bytes(bytes(forged))
    untrusted(raw, s1, "backing file names")
    link = xfs / "link.qcow2"
    link.symlink_to(s1)
    untrusted(link, s1, "Too many levels of symbolic links")
    enc = xfs / "enc.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=k",
        "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", enc, str(4 * MiB))
    untrusted(enc, reflink(enc, xfs / "enc.s2"), "encrypted")
    ext = xfs / "ext.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={xfs / 'ext.data'}", ext, str(4 * MiB))
    untrusted(ext, reflink(ext, xfs / "ext.s2"), "external data file")
    for path in (raw, link, enc, xfs / "enc.s2", ext, xfs / "ext.s2", xfs / "ext.data"):
        path.unlink()
