"""A repository's keys: what makes a target's storage owner unable to read or forge it (see docs/backup.md).

Encrypted targets (repokey, keyfile) have two random 256-bit master keys: `enc_key` seals chunks and manifests
with AES-256-GCM, `id_key` names chunks (HMAC-SHA256 over the block tree, codec.table_id) so dedupe works between
hosts that share the key while the storage owner cannot test whether known content is stored. Both are wrapped
by a passphrase through scrypt (memory-hard; n=2^16, r=8: 64 MiB, about 0.3 s here) into a key record kept in
the repository (`keys/repokey`) or only on the hosts (`<state_dir>/backup-keys/<repo_id>.key`, 0600).

Unencrypted targets (`none`) keep chunk names unkeyed (dedupe with what existing repositories hold) but every
manifest carries an HMAC by `mac_key`, a random key held by the hosts only (`<repo_id>.mac`, 0600): whoever
writes the storage cannot make or edit a manifest a host accepts. Repositories written before keys existed
(marker format 1, "legacy") keep restoring as they did; a host that has once seen a target with keys refuses
to open it as legacy again (the marker lives in the storage, so a downgrade is the first thing a forger tries).

The passphrase never comes from the command line: a file (`passphrase_file`), an environment variable the config
names (`passphrase_env`), a systemd credential (`LoadCredential=kvmkit-backup-<target>:…`), or a prompt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmkit.errors import EnvironmentProblem, InvalidInput

Mode = Literal["repokey", "keyfile", "none"]
MODES: tuple[str, ...] = ("repokey", "keyfile", "none")
REPOKEY = "keys/repokey"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 16, 8, 1
MAX_PASSPHRASE = 4096
MAX_KEY_RECORD = 8192
Hex32 = Field(pattern=r"^[0-9a-f]{32}$")
Hex64 = Field(pattern=r"^[0-9a-f]{64}$")


class KeyRecord(BaseModel):
    """A wrapped key as stored (repository or host): strict, every field bounded."""
    model_config = ConfigDict(extra="forbid")
    kvmkit_key: Literal[1] = 1
    repo_id: str = Hex32
    mode: Mode
    scrypt_n: int = Field(default=SCRYPT_N, ge=1 << 14, le=1 << 20)
    scrypt_r: int = Field(default=SCRYPT_R, ge=1, le=16)
    scrypt_p: int = Field(default=SCRYPT_P, ge=1, le=4)
    salt: str = Hex64
    nonce: str = Field(pattern=r"^[0-9a-f]{24}$")
    wrapped: str = Field(pattern=r"^[0-9a-f]{160}$")  # 64 key bytes + 16 tag bytes


class MacKey(BaseModel):
    """The host-held manifest key of an unencrypted target."""
    model_config = ConfigDict(extra="forbid")
    kvmkit_key: Literal[1] = 1
    repo_id: str = Hex32
    mode: Literal["none"] = "none"
    mac_key: str = Hex64


@dataclass(frozen=True)
class RepoKeys:
    repo_id: str
    mode: str
    enc_key: bytes | None = None  # None: chunks and manifests are stored in the clear (mode none)
    id_key: bytes | None = None  # None: chunk names are plain block-tree sha256s
    mac_key: bytes | None = None  # mode none: the host-held manifest MAC key

    @property
    def encrypted(self) -> bool:
        return self.enc_key is not None


def new_repo_id() -> str:
    return secrets.token_hex(16)


def _aad(repo_id: str, mode: str) -> bytes:
    return f"kvmkit-key-1\0{repo_id}\0{mode}".encode()


def _kdf(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def wrap(repo_id: str, mode: str, enc_key: bytes, id_key: bytes, passphrase: bytes) -> KeyRecord:
    salt, nonce = os.urandom(32), os.urandom(12)
    kek = _kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    wrapped = AESGCM(kek).encrypt(nonce, enc_key + id_key, _aad(repo_id, mode))
    return KeyRecord(repo_id=repo_id, mode=mode, salt=salt.hex(), nonce=nonce.hex(),  # type: ignore[arg-type]
                     wrapped=wrapped.hex())


@functools.lru_cache(maxsize=8)
def _unwrap_cached(record_json: str, passphrase: bytes) -> tuple[bytes, bytes] | None:
    """scrypt once per process for a given record and passphrase (a backup opens its target several times)."""
    record = KeyRecord.model_validate_json(record_json)
    kek = _kdf(passphrase, bytes.fromhex(record.salt), record.scrypt_n, record.scrypt_r, record.scrypt_p)
    try:
        plain = AESGCM(kek).decrypt(bytes.fromhex(record.nonce), bytes.fromhex(record.wrapped),
                                    _aad(record.repo_id, record.mode))
    except InvalidTag:
        return None
    return plain[:32], plain[32:]


def unwrap(record: KeyRecord, passphrase: bytes, target: str) -> RepoKeys:
    keys = _unwrap_cached(record.model_dump_json(), passphrase)
    if keys is None:
        raise InvalidInput(f"backup target {target}: wrong passphrase (or the key record was altered)")
    return RepoKeys(record.repo_id, record.mode, enc_key=keys[0], id_key=keys[1])


def new_keys(repo_id: str, mode: str) -> RepoKeys:
    if mode == "none":
        return RepoKeys(repo_id, mode, mac_key=os.urandom(32))
    return RepoKeys(repo_id, mode, enc_key=os.urandom(32), id_key=os.urandom(32))


def parse_record(blob: bytes, where: str) -> KeyRecord | MacKey:
    """A key record read from the repository, a host file or an export: strict, or InvalidInput."""
    if len(blob) > MAX_KEY_RECORD:
        raise InvalidInput(f"{where}: not a kvmkit key ({len(blob)} bytes)")
    try:
        data = json.loads(blob)
        if isinstance(data, dict) and data.get("mode") == "none":
            return MacKey.model_validate(data)
        return KeyRecord.model_validate(data)
    except (ValueError, ValidationError, RecursionError) as exc:
        raise InvalidInput(f"{where}: not a kvmkit key ({str(exc).splitlines()[0][:200]})") from None


# host files ----------------------------------------------------------------------------------------------------
def key_dir(state_dir: Path) -> Path:
    return state_dir / "backup-keys"


def host_key_path(state_dir: Path, repo_id: str, mode: str) -> Path:
    return key_dir(state_dir) / f"{repo_id}.{'mac' if mode == 'none' else 'key'}"


def read_small(path: Path, limit: int, what: str) -> bytes | None:
    """A small regular file (O_NOFOLLOW|O_NONBLOCK, fstat on the fd), None when absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EnvironmentProblem(f"{what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise EnvironmentProblem(f"{what} {path}: not a regular file of at most {limit} bytes")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, replace: bool = False) -> None:
    """A 0600 file, written beside and renamed in (replace) or made with O_EXCL."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} exists already; not overwritten") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(tmp, path)


def record_json(record: KeyRecord | MacKey) -> bytes:
    return record.model_dump_json(indent=1).encode() + b"\n"


def mac_record(keys: RepoKeys) -> MacKey:
    assert keys.mac_key is not None
    return MacKey(repo_id=keys.repo_id, mac_key=keys.mac_key.hex())  # type: ignore[arg-type]


# passphrases -----------------------------------------------------------------------------------------------------
def passphrase(target: Any, env: dict[str, str] | None = None) -> bytes | None:
    """The target's passphrase from its configured file, the environment variable it names, or a systemd
    credential named kvmkit-backup-<target> (or kvmkit-backup-passphrase); None when none is set up."""
    env = dict(os.environ) if env is None else env
    if target.passphrase_file is not None:
        blob = read_small(Path(target.passphrase_file), MAX_PASSPHRASE, f"backup target {target.name}: "
                                                                         "passphrase_file")
        if blob is None:
            raise EnvironmentProblem(f"backup target {target.name}: passphrase_file {target.passphrase_file} "
                                     "does not exist")
        return _clean(blob, target.name)
    if target.passphrase_env:
        value = env.get(target.passphrase_env)
        if not value:
            raise EnvironmentProblem(f"backup target {target.name}: environment variable {target.passphrase_env} "
                                     "(passphrase_env) is not set")
        return _clean(value.encode(), target.name)
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        for name in (f"kvmkit-backup-{target.name}", "kvmkit-backup-passphrase"):
            blob = read_small(Path(creds) / name, MAX_PASSPHRASE, "systemd credential")
            if blob is not None:
                return _clean(blob, target.name)
    return None


def _clean(blob: bytes, name: str) -> bytes:
    blob = blob.rstrip(b"\r\n")
    if not blob:
        raise InvalidInput(f"backup target {name}: the passphrase is empty")
    return blob


def fingerprint(keys: RepoKeys) -> str:
    """What `key export` prints so two hosts can compare keys without showing them."""
    material = (keys.enc_key or b"") + (keys.id_key or b"") + (keys.mac_key or b"")
    return hashlib.sha256(b"kvmkit-key-fingerprint\0" + material).hexdigest()[:16]
