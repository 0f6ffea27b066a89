"""Chunk encoding on the target (pure): "KVB1" + codec byte + payload.

    codec 0  raw bytes
    codec 2  frames of at most 64 KiB: frame codec byte (0 raw, 1 zlib, 2 zstd) + u32 length + bytes
    codec 3  delta: base chunk sha256 (32 bytes), depth, chunk length, n, n × u32 indexes of the 4 KiB blocks
             that differ from the base, then those blocks as a nested codec 0/2 container

    flag 0x80 on the codec byte: the chunk is named by its block tree (`chunk_id`), not by sha256 of its bytes

Names. A chunk written by this version is named `chunk_id(raw)` = sha256("kvmkit-tree-1" + the sha256 of each
4 KiB block): one hashing pass gives both the name and the block digests the next incremental needs, and a
changed chunk's name follows from its parent's block digests and the few blocks that were re-read, so an
incremental reads only the changed blocks (see blockindex.py). Older chunks (no flag) are named by sha256 of their
raw bytes and stay readable; decode() checks each by the scheme its flag says.

A zstd frame is one complete zstd frame (level 1, content size in its header, no checksum: the chunk's sha256
checks the content); it decodes to at most 64 KiB. Chunks of either frame codec (and of both, in one target)
stay readable whatever `compression` is configured now: the frame byte, not the configuration, says how.

Deltas are what keep an incremental's writes at the changed bytes: a guest write seldom covers whole 1 MiB
chunks, and the rest of a changed chunk (old data, often incompressible) would otherwise be stored again. A
delta needs its base to decode; depth caps the chain (MAX_DEPTH), garbage collection keeps bases alive.

Compression is decided per 64 KiB block from a 3 KiB sample (start, middle, end) run through the same
compressor: zlib manages only ~65 MB/s on data that does not compress (random, encrypted, already-compressed),
so a whole-chunk pass would make such disks back up at zlib's speed. Measured here (64 KiB frames, one core):
zlib-1 ~100-170 MB/s on binaries and source code, zstd-1 ~500 MB/s at a slightly better ratio, so zstd is the
default. The sha256 that names a chunk is of its raw bytes, so decode() checks the content, not merely the
container.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
import threading
import zlib
from collections.abc import Callable

import zstandard

MAGIC = b"KVB1"
SEALED_MAGIC = b"KVE1"  # seal.py: the same first 38 bytes' meaning (codec byte, a delta's base and depth)
RAW, BLOCKS, DELTA = 0, 2, 3  # chunk codecs
TREE = 0x80  # codec-byte flag: named by chunk_id (block tree), not sha256(raw)
TREE_PREFIX = b"kvmkit-tree-1\0"
ZLIB, ZSTD = 1, 2  # frame codecs inside BLOCKS (besides RAW)
COMPRESSIONS = ("zstd", "zlib", "none")
FRAME = struct.Struct("<BI")
BLOCK = 64 << 10
SAMPLE = 4 << 10
SAMPLE_RATIO = 0.9
DELTA_BLOCK = 4096
DELTA_HEADER = struct.Struct("<32sBII")  # base digest, depth, chunk length, changed block count
MAX_DEPTH = 4  # a delta of a delta … at most this deep; beyond it the chunk is stored whole
DELTA_MAX_SHARE = 0.95  # above this a chunk is stored whole: the delta saves < 5 % and would lengthen chains
ZSTD_LEVEL = 1
_local = threading.local()  # zstandard's (de)compressor objects must not be shared between threads


class ChunkDamaged(Exception):
    """A chunk that is missing, undecodable or whose content does not hash to its name."""

    def __init__(self, digest: str, problem: str) -> None:
        super().__init__(f"chunk {digest}: {problem}")
        self.digest, self.problem = digest, problem
        self.needed_for: str | None = None  # the delta chunk that was being read, when this one is its base


def _sample(block: memoryview) -> bytes:
    """Start, middle and end of the block: a block that begins with a few random bytes and is zeros after (a
    small file at the start of a chunk) still compresses."""
    if len(block) <= SAMPLE:
        return bytes(block)
    part, middle = SAMPLE // 4, len(block) // 2
    return b"".join((block[:part], block[middle: middle + part], block[-part:]))


_ZERO_BLOCK = bytes(DELTA_BLOCK)
_ZERO_BLOCK_DIGEST = hashlib.sha256(_ZERO_BLOCK).digest()


def digest_table(raw: bytes | bytearray | memoryview) -> bytearray:
    """The block digests end to end (32 bytes each): the form the backup's hot path and the index use.
    An all-zero block's digest is a constant: a chunk that is mostly zeros (a few blocks written into a hole,
    a file at the start of an empty region) is not hashed block by block. The test costs nothing on data: a
    block whose first or last byte is set is hashed at once; else one 4 KiB copy and a memcmp (a memoryview
    compares item by item)."""
    view, table = memoryview(raw), bytearray()
    for start in range(0, len(view), DELTA_BLOCK):
        block = view[start: start + DELTA_BLOCK]
        if block[0] == 0 and block[-1] == 0 and len(block) == DELTA_BLOCK and bytes(block) == _ZERO_BLOCK:
            table += _ZERO_BLOCK_DIGEST
        else:
            table += hashlib.sha256(block).digest()
    return table


def table_id(table: bytes | bytearray | memoryview, key: bytes | None = None) -> str:
    """A chunk's name from its digest table; keyed (HMAC-SHA256 by the repository's id key, keys.py) in an
    encrypted repository, so the storage owner cannot test whether known content is stored."""
    if key is not None:
        return hmac.new(key, TREE_PREFIX + bytes(table), hashlib.sha256).hexdigest()
    return hashlib.sha256(TREE_PREFIX + bytes(table)).hexdigest()


def chunk_id(raw: bytes | bytearray | memoryview, key: bytes | None = None) -> str:
    return table_id(digest_table(raw), key)


def _zstd_compress(data: bytes | memoryview) -> bytes:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False,
                                                                  write_content_size=True)
    return compressor.compress(data)


def _zstd_decompress(data: bytes | memoryview) -> bytes:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    if zstandard.get_frame_parameters(data).content_size > BLOCK:  # a damaged header must not make us allocate
        raise zstandard.ZstdError("frame claims more than one block")
    return decompressor.decompress(data)


def _zlib_compress(data: bytes | memoryview) -> bytes:
    return zlib.compress(data, 1)


FRAME_COMPRESSORS = {"zstd": (ZSTD, _zstd_compress), "zlib": (ZLIB, _zlib_compress)}
_ZERO_FRAME = bytes(BLOCK)  # (bytes == bytes is a memcmp; a memoryview compares item by item)


@functools.cache
def _zero_frame(compression: str, length: int) -> bytes:
    frame_codec, compress = FRAME_COMPRESSORS[compression]
    packed = compress(bytes(length))
    return FRAME.pack(frame_codec, len(packed)) + packed


def encode(raw: bytes | bytearray | memoryview, compression: str, tree: bool = False) -> bytes:
    """The chunk's blob. raw may be any buffer (the backup reads into reused ones); it is not kept.
    tree: the chunk is named by chunk_id(raw) (flag set), else by sha256(raw)."""
    flag = TREE if tree else 0
    if compression == "none":
        return b"".join((MAGIC, bytes([RAW | flag]), raw))
    if compression not in FRAME_COMPRESSORS:
        raise ValueError(f"unknown compression {compression!r} (one of {', '.join(COMPRESSIONS)})")
    frame_codec, compress = FRAME_COMPRESSORS[compression]
    frames: list[bytes | memoryview] = [MAGIC, bytes([BLOCKS | flag])]
    view = memoryview(raw)
    for start in range(0, len(view), BLOCK):
        block = view[start: start + BLOCK]
        if block[0] == 0 and block[-1] == 0 and bytes(block) == _ZERO_FRAME[: len(block)]:  # zeros: compressed once
            frames.append(_zero_frame(compression, len(block)))
            continue
        sample = _sample(block)
        packed = compress(block) if len(compress(sample)) < SAMPLE_RATIO * len(sample) else None
        if packed is not None and len(packed) < len(block):
            frames += [FRAME.pack(frame_codec, len(packed)), packed]
        else:
            frames += [FRAME.pack(RAW, len(block)), block]
    return b"".join(frames)


def _unframe(digest: str, payload: bytes, limit: int) -> bytes:
    """The frames' content; more than limit bytes (many tiny frames that each inflate to 64 KiB: a bomb) is
    refused as it grows, so decoding never allocates more than limit + one block."""
    out, view, position, total = [], memoryview(payload), 0, 0
    while position < len(view):
        if total > limit:
            raise ChunkDamaged(digest, f"undecodable (more than {limit} bytes)")
        if position + FRAME.size > len(view):
            raise ChunkDamaged(digest, "undecodable (truncated frame)")
        codec, length = FRAME.unpack_from(view, position)
        position += FRAME.size
        body = view[position: position + length]
        if len(body) != length:
            raise ChunkDamaged(digest, "undecodable (truncated frame)")
        position += length
        if codec == ZSTD:
            out.append(_zstd_decompress(body))
        elif codec == ZLIB:
            inflater = zlib.decompressobj()
            block = inflater.decompress(body, BLOCK)
            if inflater.unconsumed_tail:
                raise ChunkDamaged(digest, "undecodable (zlib frame larger than a block)")
            out.append(block)
        elif codec == RAW:
            out.append(bytes(body))
        else:
            raise ChunkDamaged(digest, f"undecodable (unknown frame codec {codec})")
        total += len(out[-1])
    if total > limit:
        raise ChunkDamaged(digest, f"undecodable (more than {limit} bytes)")
    return b"".join(out)


def changed_blocks(raw: bytes, base: bytes) -> list[int]:
    """Indexes of the 4 KiB blocks where raw and base (same length) differ."""
    a, b = memoryview(raw), memoryview(base)
    return [i for i, start in enumerate(range(0, len(raw), DELTA_BLOCK))
            if a[start: start + DELTA_BLOCK] != b[start: start + DELTA_BLOCK]]


def encode_delta(raw: bytes, base_digest: str, base_depth: int, blocks: list[int], compression: str) -> bytes:
    view = memoryview(raw)
    payload = b"".join(view[i * DELTA_BLOCK: (i + 1) * DELTA_BLOCK] for i in blocks)
    return encode_delta_blocks(payload, len(raw), base_digest, base_depth, blocks, compression)


def encode_delta_blocks(payload: bytes | bytearray | memoryview, length: int, base_digest: str, base_depth: int,
                        blocks: list[int], compression: str, tree: bool = False) -> bytes:
    """A delta from the changed blocks alone (payload: those blocks, in order): what an incremental that read only
    the changed blocks stores, without the base's bytes. tree: the chunk is named by chunk_id."""
    return b"".join((MAGIC, bytes([DELTA | (TREE if tree else 0)]),
                     DELTA_HEADER.pack(bytes.fromhex(base_digest), base_depth + 1, length, len(blocks)),
                     struct.pack(f"<{len(blocks)}I", *blocks), encode(payload, compression)))


def delta_or_none(raw: bytes, base_digest: str, base_raw: bytes, base_depth: int, compression: str) -> bytes | None:
    """A delta against the base when it is worth it (same length, shallow enough, few blocks changed)."""
    if len(base_raw) != len(raw) or base_depth >= MAX_DEPTH:
        return None
    blocks = changed_blocks(raw, base_raw)
    if len(blocks) * DELTA_BLOCK > DELTA_MAX_SHARE * len(raw):
        return None
    return encode_delta(raw, base_digest, base_depth, blocks, compression)


def _codec(blob: bytes | memoryview) -> int:
    return blob[4] & ~TREE if len(blob) > 4 else -1


def depth(blob: bytes) -> int:
    """Delta depth from a blob or its first DEPTH_HEAD bytes (0 for a whole chunk)."""
    return blob[DEPTH_HEAD - 1] if _codec(blob) == DELTA and len(blob) >= DEPTH_HEAD else 0


DEPTH_HEAD = 5 + 33  # bytes of a blob that say its base and depth


def base_of(head: bytes) -> str | None:
    """The base digest of a delta chunk, from its first 5 + 32 bytes; None for a whole chunk."""
    if head[:4] not in (MAGIC, SEALED_MAGIC) or _codec(head) != DELTA or len(head) < 37:
        return None
    return head[5:37].hex()


def _container(digest: str, blob: bytes | memoryview, limit: int) -> bytes:
    if bytes(blob[:4]) != MAGIC or len(blob) < 5:
        raise ChunkDamaged(digest, "undecodable (bad header)")
    codec, payload = blob[4] & ~TREE, blob[5:]
    if codec == RAW:
        if len(payload) > limit:
            raise ChunkDamaged(digest, f"undecodable (more than {limit} bytes)")
        return bytes(payload)
    if codec == BLOCKS:
        return _unframe(digest, bytes(payload), limit)
    raise ChunkDamaged(digest, f"undecodable (unknown codec {codec})")


def _undelta(digest: str, blob: bytes, fetch: Callable[[str], bytes], limit: int) -> bytes:
    try:
        base, _depth, length, count = DELTA_HEADER.unpack_from(blob, 5)
        if length > limit or 4 * count > len(blob):
            raise ChunkDamaged(digest, f"undecodable (delta of {length} bytes, {count} blocks)")
        blocks = struct.unpack_from(f"<{count}I", blob, 5 + DELTA_HEADER.size)
    except struct.error:
        raise ChunkDamaged(digest, "undecodable (truncated delta header)") from None
    payload = _container(digest, memoryview(blob)[5 + DELTA_HEADER.size + 4 * count:], limit)
    out = bytearray(fetch(base.hex()))
    if len(out) != length:
        raise ChunkDamaged(digest, "undecodable (base chunk has another length)")
    position = 0
    for index in blocks:
        start = index * DELTA_BLOCK
        size = min(DELTA_BLOCK, length - start)
        if size <= 0 or position + size > len(payload):
            raise ChunkDamaged(digest, "undecodable (delta blocks out of range)")
        out[start: start + size] = payload[position: position + size]
        position += size
    return bytes(out)


def decode(digest: str, blob: bytes, fetch: Callable[[str], bytes] | None = None, limit: int = 16 << 20,
           verify: bool = True, id_key: bytes | None = None) -> bytes:
    """The raw chunk, or ChunkDamaged when the container is broken, would decode to more than limit bytes, or
    the content does not hash to its name. fetch(base digest) → raw base: needed for delta chunks (the store
    passes its own reader). verify=False skips the hash: only for a delta's base, whose bytes the delta's own
    hash then checks (a base with a wrong block the delta replaces does no harm; any other shows there)."""
    try:
        if _codec(blob) == DELTA and blob[:4] == MAGIC:
            if fetch is None:
                raise ChunkDamaged(digest, "undecodable (delta chunk without a base reader)")
            raw = _undelta(digest, blob, fetch, limit)
        else:
            raw = _container(digest, blob, limit)
    except zlib.error:
        raise ChunkDamaged(digest, "undecodable (zlib stream damaged)") from None
    except zstandard.ZstdError:
        raise ChunkDamaged(digest, "undecodable (zstd frame damaged)") from None
    if id_key is not None and verify and not (len(blob) > 4 and blob[4] & TREE):
        raise ChunkDamaged(digest, "hash mismatch (an unkeyed chunk in a keyed repository)")
    if verify and (chunk_id(raw, id_key) if len(blob) > 4 and blob[4] & TREE
                   else hashlib.sha256(raw).hexdigest()) != digest:
        raise ChunkDamaged(digest, "hash mismatch (content changed on the target)")
    return raw
