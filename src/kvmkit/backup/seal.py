"""Sealing chunks and manifests with a repository's keys (pure; keys.py makes the keys).

Sealed chunk:   "KVE1" + codec byte [+ base id (32) + depth (1) for a delta] + nonce (12) + AES-256-GCM(blob)
                associated data: everything before the nonce + the chunk's id
The clear header is what garbage collection and a new delta need from a chunk without its key (its base and
delta depth); it is authenticated, so it cannot be changed either. The chunk id is associated data, so a chunk
served under another name (two chunks swapped, one copied over another) fails to open: nothing decrypts that
was not sealed for exactly that name. The plaintext is the clear chunk blob of codec.py.

Sealed manifest: "KVMS1\\n" + nonce (12) + AES-256-GCM(JSON), associated data: repository id, VM uuid, snapshot
MACed manifest:  "KVMA1\\n" + HMAC-SHA256(mac_key, same binding + JSON) (32) + JSON      (mode none)
Both bind a manifest to its place: moved to another VM's or snapshot's name, or into another repository, it is
refused; edited, it is refused.

AES-256-GCM goes through the `cryptography` package's GCM mode with `update_into` (the bytes are exactly
AESGCM's: ciphertext then the 16-byte tag): the AESGCM class of Debian's cryptography 38 copies every byte
through a zero-filled buffer while holding the GIL, ~0.5 GB/s here against OpenSSL's ~3 GB/s, which made an
encrypted backup a third slower than a clear one. `update_into` writes once into a buffer made for the sealed
object (header, nonce, ciphertext, tag: no join) with the GIL released, at ~2.8 GB/s. Below ONE_SHOT bytes (an
incremental's small deltas, manifests) the one-shot AESGCM stays: its set-up is cheaper. An opened object is used
only after its tag checked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kvmkit.backup import codec
from kvmkit.backup.keys import RepoKeys

CHUNK_MAGIC = b"KVE1"
SEALED_MANIFEST = b"KVMS1\n"
MACED_MANIFEST = b"KVMA1\n"
NONCE = 12
TAG = 16
# below this the one-shot AESGCM is quicker (its per-call set-up is about half the streaming context's; its copy
# costs little on a small blob); above it update_into's single pass wins. Both give the same bytes.
ONE_SHOT = 64 << 10


_scratch = threading.local()  # seal_chunk's output buffer, one per thread, reused


class SealBroken(Exception):
    """A sealed object that does not open with this repository's key (altered, renamed, or another key)."""


def _gcm_seal(key: bytes, prefix: bytes, data: bytes | bytearray | memoryview, aad: bytes,
              out: bytearray | memoryview | None = None) -> bytearray | memoryview:
    """prefix + a fresh nonce + AES-256-GCM(data) + tag, written straight into one buffer (out: exactly
    len(prefix) + NONCE + len(data) + TAG bytes to write into; else a new bytearray)."""
    nonce = os.urandom(NONCE)
    start = len(prefix) + NONCE
    if out is None:
        out = bytearray(start + len(data) + TAG)  # update_into wants len(data) + 15 bytes: the tag's room
    out[:len(prefix)], out[len(prefix):start] = prefix, nonce
    if len(data) < ONE_SHOT:
        out[start:] = AESGCM(key).encrypt(nonce, bytes(data), aad)
        return out
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    done = encryptor.update_into(data, memoryview(out)[start:]) if len(data) else 0
    encryptor.finalize()
    out[start + done:] = encryptor.tag
    return out


def _gcm_open(key: bytes, nonce: bytes | bytearray | memoryview, body: bytes | bytearray | memoryview,
              aad: bytes) -> bytearray:
    """The plaintext of ciphertext + tag (body), or InvalidTag; returned only after the tag checked."""
    if len(nonce) != NONCE or len(body) < TAG:
        raise InvalidTag()
    view = memoryview(body)
    if len(view) < ONE_SHOT:
        return bytearray(AESGCM(key).decrypt(bytes(nonce), bytes(view), aad))
    decryptor = Cipher(algorithms.AES(key), modes.GCM(bytes(nonce), bytes(view[-TAG:]))).decryptor()
    decryptor.authenticate_additional_data(aad)
    out = bytearray(len(view) - TAG + 15)
    done = decryptor.update_into(view[:-TAG], out) if len(view) > TAG else 0
    decryptor.finalize()  # InvalidTag: nothing of out is used
    del out[done:]
    return out


def _chunk_header(blob: bytes | memoryview) -> bytes:
    head = bytes(blob[:5])
    if codec.base_of(bytes(blob[:codec.DEPTH_HEAD])) is not None:
        return CHUNK_MAGIC + head[4:5] + bytes(blob[5:codec.DEPTH_HEAD])
    return CHUNK_MAGIC + head[4:5]


def _reused(size: int) -> memoryview:
    """This thread's sealing buffer, at least `size` bytes. A new ~1 MiB buffer per chunk cost more than the
    cipher: each came from fresh pages (a thread's malloc arena trims and refaults them), 2 s of kernel time
    in a 1 GiB backup against 0.2 s of AES."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.buffer = bytearray(max(size, 1 << 20))
    return memoryview(buffer)[:size]


def seal_chunk(keys: RepoKeys, digest: str, blob: bytes | bytearray | memoryview) -> memoryview:
    """The sealed chunk, in this thread's reused buffer: valid until this thread's next seal_chunk (the store
    writes it at once and keeps nothing)."""
    assert keys.enc_key is not None
    header = _chunk_header(blob)
    out = _reused(len(header) + NONCE + len(blob) + TAG)
    _gcm_seal(keys.enc_key, header, blob, header + bytes.fromhex(digest), out)
    return out


def open_chunk(keys: RepoKeys, digest: str, sealed: bytes) -> bytearray:
    """The clear chunk blob, or SealBroken."""
    assert keys.enc_key is not None
    if sealed[:4] != CHUNK_MAGIC or len(sealed) < 5:
        raise SealBroken("not sealed with this repository's key")
    size = codec.DEPTH_HEAD if sealed[4] & ~codec.TREE == codec.DELTA else 5
    view = memoryview(sealed)
    header, nonce, body = bytes(view[:size]), bytes(view[size: size + NONCE]), view[size + NONCE:]
    if len(nonce) != NONCE or len(body) < TAG:
        raise SealBroken("truncated")
    try:
        blob = _gcm_open(keys.enc_key, nonce, body, header + bytes.fromhex(digest))
    except InvalidTag:
        raise SealBroken("authentication failed (altered, stored under another name, or another key)") from None
    if _chunk_header(blob) != header:
        raise SealBroken("its clear header does not match its content")
    return blob


def _binding(keys: RepoKeys, vm_uuid: str, snapshot: str) -> bytes:
    return f"kvmkit-manifest-1\0{keys.repo_id}\0{vm_uuid}\0{snapshot}".encode()


def seal_manifest(keys: RepoKeys, vm_uuid: str, snapshot: str, data: bytes) -> bytes:
    binding = _binding(keys, vm_uuid, snapshot)
    if keys.enc_key is not None:
        return bytes(_gcm_seal(keys.enc_key, SEALED_MANIFEST, data, binding))
    assert keys.mac_key is not None
    return MACED_MANIFEST + hmac.new(keys.mac_key, binding + data, hashlib.sha256).digest() + data


def open_manifest(keys: RepoKeys, vm_uuid: str, snapshot: str, blob: bytes) -> bytes:
    """The manifest's JSON, or SealBroken: not sealed the way this repository seals, altered, or sealed for
    another name or repository."""
    binding = _binding(keys, vm_uuid, snapshot)
    if keys.enc_key is not None:
        if not blob.startswith(SEALED_MANIFEST):
            raise SealBroken("not sealed (this repository's manifests are encrypted)")
        nonce, body = blob[6:6 + NONCE], blob[6 + NONCE:]
        try:
            return bytes(_gcm_open(keys.enc_key, nonce, body, binding))
        except (InvalidTag, ValueError):
            raise SealBroken("authentication failed (altered, moved from another name, or another key)") from None
    assert keys.mac_key is not None
    if not blob.startswith(MACED_MANIFEST):
        raise SealBroken("no MAC (this repository's manifests carry one)")
    mac, data = blob[6:38], blob[38:]
    if not hmac.compare_digest(mac, hmac.new(keys.mac_key, binding + data, hashlib.sha256).digest()):
        raise SealBroken("MAC mismatch (altered, moved from another name, or another host key)")
    return data
