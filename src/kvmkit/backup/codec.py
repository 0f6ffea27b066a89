"""Chunk encoding on the target (pure): "KVB1" + codec byte + payload.

    codec 0  raw bytes
    codec 2  frames of at most 64 KiB: frame codec byte (0 raw, 1 zlib) + u32 length + bytes

Compression is decided per 64 KiB block from a 3 KiB sample (start, middle, end), because zlib manages only
~30 MB/s on data that does not compress (random, encrypted, already-compressed): a whole-chunk pass would make
such disks back up at zlib's speed. A sample costs 1/20 of that; text-like blocks compress at ~600 MB/s. The
sha256 that names a chunk is of its raw bytes, so decode() checks the content, not merely the container.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

MAGIC = b"KVB1"
RAW, ZLIB, BLOCKS = 0, 1, 2  # chunk codecs (RAW, BLOCKS) and frame codecs inside BLOCKS (RAW, ZLIB)
FRAME = struct.Struct("<BI")
BLOCK = 64 << 10
SAMPLE = 4 << 10
SAMPLE_RATIO = 0.9


class ChunkDamaged(Exception):
    """A chunk that is missing, undecodable or whose content does not hash to its name."""

    def __init__(self, digest: str, problem: str) -> None:
        super().__init__(f"chunk {digest}: {problem}")
        self.digest, self.problem = digest, problem


def _sample(block: memoryview) -> bytes:
    """Start, middle and end of the block: a block that begins with a few random bytes and is zeros after (a
    small file at the start of a chunk) still compresses."""
    if len(block) <= SAMPLE:
        return bytes(block)
    part, middle = SAMPLE // 4, len(block) // 2
    return b"".join((block[:part], block[middle: middle + part], block[-part:]))


def encode(raw: bytes, compression: str) -> bytes:
    if compression != "zlib":
        return MAGIC + bytes([RAW]) + raw
    frames: list[bytes | memoryview] = [MAGIC, bytes([BLOCKS])]
    view = memoryview(raw)
    for start in range(0, len(raw), BLOCK):
        block = view[start: start + BLOCK]
        sample = _sample(block)
        packed = zlib.compress(block, 1) if len(zlib.compress(sample, 1)) < SAMPLE_RATIO * len(sample) else None
        if packed is not None and len(packed) < len(block):
            frames += [FRAME.pack(ZLIB, len(packed)), packed]
        else:
            frames += [FRAME.pack(RAW, len(block)), block]
    return b"".join(frames)


def _unframe(digest: str, payload: bytes) -> bytes:
    out, view, position = [], memoryview(payload), 0
    while position < len(view):
        if position + FRAME.size > len(view):
            raise ChunkDamaged(digest, "undecodable (truncated frame)")
        codec, length = FRAME.unpack_from(view, position)
        position += FRAME.size
        body = view[position: position + length]
        if len(body) != length:
            raise ChunkDamaged(digest, "undecodable (truncated frame)")
        position += length
        if codec == ZLIB:
            out.append(zlib.decompress(body))
        elif codec == RAW:
            out.append(bytes(body))
        else:
            raise ChunkDamaged(digest, f"undecodable (unknown frame codec {codec})")
    return b"".join(out)


def decode(digest: str, blob: bytes) -> bytes:
    """The raw chunk, or ChunkDamaged when the container is broken or the content does not hash to its name."""
    if blob[:4] != MAGIC or len(blob) < 5:
        raise ChunkDamaged(digest, "undecodable (bad header)")
    codec, payload = blob[4], blob[5:]
    try:
        if codec == RAW:
            raw = payload
        elif codec == BLOCKS:
            raw = _unframe(digest, payload)
        else:
            raise ChunkDamaged(digest, f"undecodable (unknown codec {codec})")
    except zlib.error:
        raise ChunkDamaged(digest, "undecodable (zlib stream damaged)") from None
    if hashlib.sha256(raw).hexdigest() != digest:
        raise ChunkDamaged(digest, "hash mismatch (content changed on the target)")
    return raw
