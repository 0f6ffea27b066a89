"""The speed work on the backup paths (issue 23 item 6) changes how, never what: sealed bytes keep their format, a
zero block keeps its digest, kept chunk folders are closed with their block, and the readahead thread hands on
the work list's own error and ends."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kvmkit.backup import codec, seal
from kvmkit.backup.chunk_work import ChunkWork
from kvmkit.backup.keys import RepoKeys
from kvmkit.backup.store import DirTarget
from kvmkit.config import Settings
from kvmkit.snapshot.drivers.reading import FileReader
from kvmkit.snapshot.drivers.registry import named_drivers

KEYS = RepoKeys("0" * 32, "repokey", enc_key=os.urandom(32), id_key=os.urandom(32))


def _blob(raw: bytes) -> tuple[str, bytes]:
    return codec.chunk_id(raw, KEYS.id_key), codec.encode(raw, "zstd", tree=True)


@pytest.mark.parametrize("raw", [os.urandom(1 << 20), b"log line\n" * 5000, bytes(8192)],
                         ids=["random", "text", "zeros"])
def test_a_sealed_chunk_is_what_aesgcm_makes_and_opens_both_ways(raw):
    digest, blob = _blob(raw)
    sealed = bytes(seal.seal_chunk(KEYS, digest, blob))
    header = seal._chunk_header(blob)
    nonce, body = sealed[len(header): len(header) + seal.NONCE], sealed[len(header) + seal.NONCE:]
    aad = header + bytes.fromhex(digest)
    assert AESGCM(KEYS.enc_key).decrypt(nonce, body, aad) == blob  # the one-shot AEAD reads the new seal
    earlier = header + nonce + AESGCM(KEYS.enc_key).encrypt(nonce, blob, aad)  # what repositories hold already
    assert earlier == sealed
    assert seal.open_chunk(KEYS, digest, earlier) == blob


def test_a_sealed_chunk_is_refused_when_flipped_cut_or_renamed():
    digest, blob = _blob(os.urandom(70000))
    sealed = bytes(seal.seal_chunk(KEYS, digest, blob))
    for broken in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:40], sealed[:-seal.TAG]):
        with pytest.raises(seal.SealBroken):
            seal.open_chunk(KEYS, digest, broken)
    with pytest.raises(seal.SealBroken):
        seal.open_chunk(KEYS, codec.chunk_id(b"other", KEYS.id_key), sealed)


def test_a_thread_s_next_seal_does_not_change_what_another_thread_sealed():
    digests = [_blob(os.urandom(50000)) for _ in range(2)]
    out: dict[int, bytes] = {}

    def one(n: int) -> None:
        first = bytes(seal.seal_chunk(KEYS, *digests[n]))
        for _ in range(20):
            seal.seal_chunk(KEYS, *digests[1 - n])  # the same thread's buffer is reused; the other's is not
        out[n] = first

    threads = [threading.Thread(target=one, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(2):
        assert seal.open_chunk(KEYS, digests[n][0], out[n]) == digests[n][1]


def test_a_sealed_manifest_opens_with_the_one_shot_aead_and_is_bound_to_its_name():
    sealed = seal.seal_manifest(KEYS, "vm-uuid", "s1", b'{"a": 1}')
    binding = seal._binding(KEYS, "vm-uuid", "s1")
    assert AESGCM(KEYS.enc_key).decrypt(sealed[6:18], sealed[18:], binding) == b'{"a": 1}'
    assert seal.open_manifest(KEYS, "vm-uuid", "s1", sealed) == b'{"a": 1}'
    for name, blob in (("s2", sealed), ("s1", sealed[:20]), ("s1", sealed[:-1] + bytes([sealed[-1] ^ 1]))):
        with pytest.raises(seal.SealBroken):
            seal.open_manifest(KEYS, "vm-uuid", name, blob)


@pytest.mark.parametrize("raw", [bytes(1 << 20), os.urandom(1 << 20), bytes(4095) + b"\1" + bytes(8192),
                                 b"\1" + bytes(4094) + b"\0", bytes(5000), os.urandom(10) + bytes(20000)],
                         ids=["zeros", "random", "last-byte", "first-byte", "short-tail", "mixed"])
def test_the_digest_table_skips_hashing_zero_blocks_with_the_same_result(raw):
    view = memoryview(raw)
    want = b"".join(hashlib.sha256(view[i: i + codec.DELTA_BLOCK]).digest()
                    for i in range(0, len(raw), codec.DELTA_BLOCK))
    assert bytes(codec.digest_table(raw)) == want
    assert bytes(codec.digest_table(bytearray(raw))) == want


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_kept_chunk_folders_serve_reads_and_writes_and_close_with_their_block(tmp_path):
    target = DirTarget("t", tmp_path)
    before = _open_fds()
    names = [hashlib.sha256(bytes([n])).hexdigest() for n in range(40)]  # many chunk folders
    with target.folder_cache():
        for name in names:
            target._put(f"chunks/{name[:2]}/{name}", name.encode(), durable=False)
        with target.folder_cache():  # nested: the outer block keeps owning the folders
            assert all(target._get(f"chunks/{n[:2]}/{n}") == n.encode() for n in names)
        assert len(_open_fds() - before) == len({n[:2] for n in names})
    assert _open_fds() - before == set()
    assert all(target._exists(f"chunks/{n[:2]}/{n}") for n in names)  # and without the block, as always


def test_a_kept_folder_does_not_make_a_planted_symlink_followed(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "elsewhere").mkdir()
    target = DirTarget("t", tmp_path / "repo")
    (tmp_path / "repo" / "chunks").mkdir()
    (tmp_path / "repo" / "chunks" / "ab").symlink_to(tmp_path / "elsewhere")
    name = "ab" * 32
    (tmp_path / "elsewhere" / name).write_bytes(b"planted")
    with target.folder_cache():
        for _ in range(2):  # the first call would keep the folder, the second use it
            assert not target._exists(f"chunks/ab/{name}")
            with pytest.raises(OSError):
                target._open_file(f"chunks/ab/{name}")
            with pytest.raises(Exception, match="writing"):
                target._put(f"chunks/ab/{name}", b"mine", durable=False)
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == [name]
    assert (tmp_path / "elsewhere" / name).read_bytes() == b"planted"


class _Boom(Exception):
    pass


def test_the_readahead_thread_hands_on_the_work_list_s_error_and_ends(tmp_path: Path):
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(1 << 20))
    reader = FileReader(image)
    work = ChunkWork.__new__(ChunkWork)  # only the readahead is exercised: it needs the reader and chunk size
    work.reader, work.chunk_size = reader, 1 << 18

    def items():
        yield 0, [0, 1]
        yield 1, [3]
        raise _Boom("extent map went backwards")

    before = threading.active_count()
    try:
        seen = []
        with pytest.raises(_Boom):
            for item in work._ahead(items()):
                seen.append(item)
        assert seen == [(0, [0, 1]), (1, [3])]
        assert threading.active_count() == before
        # and a consumer that stops early ends the thread too
        gen = work._ahead((i, [0]) for i in range(10_000))
        assert next(gen) == (0, [0])
        gen.close()
        assert threading.active_count() == before
    finally:
        reader.close()


def test_a_backup_builds_only_the_drivers_its_disks_name(tmp_path):
    settings = Settings(state_dir=tmp_path)
    assert [d.name for d in named_drivers(settings, {"file"})] == ["file"]
    assert named_drivers(settings, set()) == []
