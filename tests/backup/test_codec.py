"""Chunk encoding: round trips, compression only where it pays, and damage always detected."""

from __future__ import annotations

import hashlib
import os

import pytest

from kvmkit.backup.codec import ChunkDamaged, base_of, decode, delta_or_none, depth, encode

TEXT = (b"the quick brown fox jumps over the lazy dog; " * 30000)[: 1 << 20]


@pytest.mark.parametrize("raw", [os.urandom(1 << 20), TEXT, bytes(1 << 20), os.urandom(300) + TEXT[:70000], b"x"],
                         ids=["random", "text", "zeros", "mixed-short", "one-byte"])
@pytest.mark.parametrize("compression", ["zlib", "none"])
def test_round_trip(raw, compression):
    digest = hashlib.sha256(raw).hexdigest()
    assert decode(digest, encode(raw, compression)) == raw


def test_text_compresses_and_random_is_stored_with_only_frame_overhead():
    assert len(encode(TEXT, "zlib")) < len(TEXT) / 20
    random = os.urandom(1 << 20)
    assert len(random) < len(encode(random, "zlib")) <= len(random) + 5 + 16 * 5


def test_half_random_half_text_compresses_the_text_half():
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    assert len(encode(raw, "zlib")) < 0.55 * len(raw)


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "codec"])
def test_damage_is_detected(damage):
    raw = os.urandom(1 << 19) + TEXT[: 1 << 19]
    digest = hashlib.sha256(raw).hexdigest()
    blob = bytearray(encode(raw, "zlib"))
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


def test_a_block_that_starts_random_and_ends_in_zeros_is_compressed():
    raw = os.urandom(4096) + bytes((1 << 20) - 4096)  # a small file at the start of an otherwise empty chunk
    assert len(encode(raw, "zlib")) < 3 * 4096


def test_a_delta_stores_only_the_changed_blocks_and_decodes_through_its_base():
    base = os.urandom(1 << 20)
    raw = bytearray(base)
    raw[5000:5010] = b"0123456789"  # one 4 KiB block changed
    raw = bytes(raw)
    base_digest, digest = hashlib.sha256(base).hexdigest(), hashlib.sha256(raw).hexdigest()
    blob = delta_or_none(raw, base_digest, base, 0, "zlib")
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
