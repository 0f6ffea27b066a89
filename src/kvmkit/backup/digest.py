"""The per-disk content digest (pure): one sha256 that pins a disk's whole guest-visible content.

    content_digest = sha256( id(chunk 0) ‖ id(chunk 1) ‖ … ‖ id(chunk n-1) )

over every fixed-size chunk of the disk in order, holes included (a zero chunk contributes the sha256 of its
zeros). A chunk's id is its name in the store (codec.chunk_id: the sha256 over its 4 KiB blocks' sha256s; chunks
stored before block trees keep their plain sha256 name) and what decoding checks, so the digest costs 32 bytes of
hashing per chunk — milliseconds for a 100 GiB disk — instead of re-reading every byte, holes included; yet it
changes when any byte, or the order of any two chunks, changes (a one-level hash tree, like a Glacier tree hash).
`of_file` computes the same value from an image, so a restored disk can be checked by anyone (in an encrypted
repository chunk ids are keyed, so the digest is too: only a holder of the key can compute or forge it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from functools import lru_cache

from kvmkit.backup.chunking import chunk_count, chunk_span
from kvmkit.backup.codec import chunk_id


@lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


def of_map(chunk_map: Mapping[int, str], size: int, chunk_size: int) -> str:
    """The digest of a disk whose non-zero chunks are chunk_map (index → sha256 hex)."""
    return of_digests(lambda i: bytes.fromhex(chunk_map[i]) if i in chunk_map else None, size, chunk_size)


def of_digests(digest_of: Callable[[int], bytes | None], size: int, chunk_size: int) -> str:
    """digest_of(index) → the chunk's raw sha256, or None for a zero chunk."""
    tree = hashlib.sha256()
    for index in range(chunk_count(size, chunk_size)):
        digest = digest_of(index)
        tree.update(digest if digest is not None else zero_digest(chunk_span(index, size, chunk_size)[1]))
    return tree.hexdigest()


def of_file(path: str | os.PathLike, chunk_size: int, id_key: bytes | None = None) -> str:
    """The digest of an image file or device, read chunk by chunk (bounded memory), as a backup of it made now
    names its chunks."""
    with open(path, "rb", buffering=0) as fh:
        size = fh.seek(0, os.SEEK_END)
        tree = hashlib.sha256()
        for index in range(chunk_count(size, chunk_size)):
            offset, length = chunk_span(index, size, chunk_size)
            raw = os.pread(fh.fileno(), length, offset)
            tree.update(zero_digest(length) if not any(raw) else bytes.fromhex(chunk_id(raw, id_key)))
        return tree.hexdigest()
