"""Chunk encoding: round trips, compression only where it pays, and damage always detected."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import pytest
import zstandard

from kvmkit.backup.codec import (
    BLOCK,
    BLOCKS,
    FRAME,
    MAGIC,
    RAW,
    ZLIB,
    ZSTD,
    ChunkDamaged,
    base_of,
    decode,
    delta_or_none,
    depth,
    encode,
)

TEXT = (b"the quick brown fox jumps over the lazy dog; " * 30000)[: 1 << 20]


@pytest.mark.parametrize("raw", [os.urandom(1 << 20), TEXT, bytes(1 << 20), os.urandom(300) + TEXT[:70000], b"x"],
                         ids=["random", "text", "zeros", "mixed-short", "one-byte"])
@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_round_trip(raw, compression):
    digest = hashlib.sha256(raw).hexdigest()
    assert decode(digest, encode(raw, compression)) == raw


@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_encode_takes_the_reused_buffers_the_backup_reads_into(compression):
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    digest = hashlib.sha256(raw).hexdigest()
    for buffer in (bytearray(raw), memoryview(bytearray(raw))):
        assert decode(digest, encode(buffer, compression)) == raw


def test_unknown_compression_is_refused_not_stored_raw():
    with pytest.raises(ValueError, match="unknown compression 'lz4'"):
        encode(TEXT, "lz4")


def frames(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(frame codec, offset of the body in blob, body) of a BLOCKS chunk."""
    out, position = [], 5
    while position < len(blob):
        codec, length = FRAME.unpack_from(blob, position)
        position += FRAME.size
        out.append((codec, position, blob[position: position + length]))
        position += length
    return out


def test_zstd_frames_compress_text_and_leave_random_blocks_raw():
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    codecs = [codec for codec, _, _ in frames(encode(raw, "zstd"))]
    assert codecs == [RAW] * 8 + [ZSTD] * 8
    assert len(encode(TEXT, "zstd")) < len(TEXT) / 20


def test_random_data_never_goes_through_the_compressor_whole(monkeypatch):
    from kvmkit.backup import codec

    seen: list[int] = []
    real = codec._zstd_compress
    monkeypatch.setitem(codec.FRAME_COMPRESSORS, "zstd", (ZSTD, lambda data: seen.append(len(data)) or real(data)))
    encode(os.urandom(1 << 20), "zstd")
    assert seen and max(seen) <= 3 * 1024  # only the 3 KiB samples


def damage_first_zstd_frame(blob: bytes, how: str) -> bytes:
    codec, start, body = next(f for f in frames(blob) if f[0] == ZSTD)
    out = bytearray(blob)
    if how == "magic":
        out[start: start + 4] = b"\0\0\0\0"
    elif how == "truncated":  # a shorter body whose length field agrees: the zstd frame itself is cut
        del out[start + len(body) - 4: start + len(body)]
        FRAME.pack_into(out, start - FRAME.size, codec, len(body) - 4)
    elif how == "oversized":  # a frame that declares more than a block: refused before its size is allocated
        huge = zstandard.ZstdCompressor(level=1).compress(bytes(64 * BLOCK))
        out[start - FRAME.size: start + len(body)] = FRAME.pack(ZSTD, len(huge)) + huge
    return bytes(out)


@pytest.mark.parametrize("how", ["magic", "truncated", "oversized"])
def test_a_damaged_zstd_frame_names_the_chunk(how):
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    digest = hashlib.sha256(raw).hexdigest()
    with pytest.raises(ChunkDamaged) as info:
        decode(digest, damage_first_zstd_frame(encode(raw, "zstd"), how))
    assert info.value.digest == digest and info.value.problem == "undecodable (zstd frame damaged)"
    assert digest in str(info.value)


def test_chunks_written_with_zlib_still_decode():
    """A chunk as kvmkit wrote it before zstd (built here by hand, not by encode), and one that mixes both."""
    raw = TEXT[: 3 * BLOCK] + os.urandom(BLOCK)
    blocks = [raw[i: i + BLOCK] for i in range(0, len(raw), BLOCK)]
    old = MAGIC + bytes([BLOCKS]) + b"".join(
        struct.pack("<BI", ZLIB, len(z)) + z for z in map(lambda b: zlib.compress(b, 1), blocks[:3])) \
        + struct.pack("<BI", RAW, BLOCK) + blocks[3]
    mixed = MAGIC + bytes([BLOCKS]) + b"".join((
        FRAME.pack(ZLIB, len(a := zlib.compress(blocks[0], 1))), a,
        FRAME.pack(ZSTD, len(b := zstandard.ZstdCompressor(level=1).compress(blocks[1]))), b,
        FRAME.pack(RAW, BLOCK), blocks[2], FRAME.pack(RAW, BLOCK), blocks[3]))
    digest = hashlib.sha256(raw).hexdigest()
    assert decode(digest, old) == raw and decode(digest, mixed) == raw


def test_text_compresses_and_random_is_stored_with_only_frame_overhead():
    assert len(encode(TEXT, "zlib")) < len(TEXT) / 20
    random = os.urandom(1 << 20)
    assert len(random) < len(encode(random, "zlib")) <= len(random) + 5 + 16 * 5


def test_half_random_half_text_compresses_the_text_half():
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    assert len(encode(raw, "zlib")) < 0.55 * len(raw)


@pytest.mark.parametrize("compression", ["zstd", "zlib"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "codec"])
def test_damage_is_detected(damage, compression):
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    digest = hashlib.sha256(raw).hexdigest()
    blob = bytearray(encode(raw, compression))
    if damage == "flip":
        blob[-100] ^= 0x01
    elif damage == "truncate":
        del blob[-10:]
    elif damage == "header":
        blob[0:4] = b"XXXX"
    else:
        blob[4] = 9
    with pytest.raises(ChunkDamaged) as info:
        decode(digest, bytes(blob))
    assert info.value.digest == digest


@pytest.mark.parametrize("compression", ["zstd", "zlib"])
def test_a_block_that_starts_random_and_ends_in_zeros_is_compressed(compression):
    raw = os.urandom(4096) + bytes((1 << 20) - 4096)  # a small file at the start of an otherwise empty chunk
    assert len(encode(raw, compression)) < 3 * 4096


def test_a_delta_stores_only_the_changed_blocks_and_decodes_through_its_base():
    base = os.urandom(1 << 20)
    raw = bytearray(base)
    raw[5000:5010] = b"0123456789"  # one 4 KiB block changed
    raw = bytes(raw)
    base_digest, digest = hashlib.sha256(base).hexdigest(), hashlib.sha256(raw).hexdigest()
    blob = delta_or_none(raw, base_digest, base, 0, "zstd")
    assert blob is not None and len(blob) < 4096 + 200
    assert base_of(blob[:37]) == base_digest and depth(blob) == 1
    assert decode(digest, blob, {base_digest: base}.__getitem__) == raw
    with pytest.raises(ChunkDamaged, match="hash mismatch"):  # a wrong base is caught by the chunk's own hash
        decode(digest, blob, lambda _d: os.urandom(1 << 20))


def test_no_delta_when_too_much_changed_or_too_deep_or_lengths_differ():
    base = os.urandom(1 << 20)
    assert delta_or_none(os.urandom(1 << 20), "00" * 32, base, 0, "zlib") is None
    assert delta_or_none(base[:-1] + b"x", "00" * 32, base, 4, "zlib") is None
    assert delta_or_none(base[:1000], "00" * 32, base, 0, "zlib") is None
