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
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kvmkit.backup import codec
from kvmkit.backup.keys import RepoKeys

CHUNK_MAGIC = b"KVE1"
SEALED_MANIFEST = b"KVMS1\n"
MACED_MANIFEST = b"KVMA1\n"
NONCE = 12
TAG = 16


class SealBroken(Exception):
    """A sealed object that does not open with this repository's key (altered, renamed, or another key)."""


def _chunk_header(blob: bytes | memoryview) -> bytes:
    head = bytes(blob[:5])
    if codec.base_of(bytes(blob[:codec.DEPTH_HEAD])) is not None:
        return CHUNK_MAGIC + head[4:5] + bytes(blob[5:codec.DEPTH_HEAD])
    return CHUNK_MAGIC + head[4:5]


def seal_chunk(keys: RepoKeys, digest: str, blob: bytes) -> bytes:
    assert keys.enc_key is not None
    header = _chunk_header(blob)
    nonce = os.urandom(NONCE)
    return b"".join((header, nonce, AESGCM(keys.enc_key).encrypt(nonce, blob, header + bytes.fromhex(digest))))


def open_chunk(keys: RepoKeys, digest: str, sealed: bytes) -> bytes:
    """The clear chunk blob, or SealBroken."""
    assert keys.enc_key is not None
    if sealed[:4] != CHUNK_MAGIC or len(sealed) < 5:
        raise SealBroken("not sealed with this repository's key")
    size = codec.DEPTH_HEAD if sealed[4] & ~codec.TREE == codec.DELTA else 5
    header, nonce, body = sealed[:size], sealed[size: size + NONCE], sealed[size + NONCE:]
    if len(nonce) != NONCE or len(body) < TAG:
        raise SealBroken("truncated")
    try:
        blob = AESGCM(keys.enc_key).decrypt(nonce, body, header + bytes.fromhex(digest))
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
        nonce = os.urandom(NONCE)
        return SEALED_MANIFEST + nonce + AESGCM(keys.enc_key).encrypt(nonce, data, binding)
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
            return AESGCM(keys.enc_key).decrypt(nonce, body, binding)
        except (InvalidTag, ValueError):
            raise SealBroken("authentication failed (altered, moved from another name, or another key)") from None
    assert keys.mac_key is not None
    if not blob.startswith(MACED_MANIFEST):
        raise SealBroken("no MAC (this repository's manifests carry one)")
    mac, data = blob[6:38], blob[38:]
    if not hmac.compare_digest(mac, hmac.new(keys.mac_key, binding + data, hashlib.sha256).digest()):
        raise SealBroken("MAC mismatch (altered, moved from another name, or another host key)")
    return data
