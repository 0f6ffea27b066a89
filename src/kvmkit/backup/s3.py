"""An S3-compatible bucket as a backup target (Ceph radosgw, MinIO, AWS S3 …), through boto3.

Keys mirror a dir target's files (store.py): `kvmkit-backup.json`, `chunks/ab/<sha256>`,
`manifests/<vm_uuid>/<snapshot>.json`, `incomplete/<vm_uuid>--<snapshot>.json`, plus `lock` while a prune or
delete runs. Everything that is not storage (deltas, verification, manifests, garbage collection) is
`ChunkStore`'s; this module only moves blobs.

* Durability: a PUT that returned is stored and an object appears only whole, so `sync`/`sync_dirs` are no-ops
  and a manifest is still written last: a backup is good exactly when its manifest exists.
* Sharing: any number of hosts back up to one bucket and any may prune; no lock is needed for that (S3 cannot
  make one atomic: no conditional PUT on radosgw 16). A backup announces itself with a lease (leases.py) and
  touches every chunk it reuses; garbage collection never removes a chunk younger than its margin or than the
  oldest live lease (gc.py, docs/backup.md). Processes on one host still share a local flock keyed by endpoint
  + bucket, and a prune puts a `lock` object naming its host and pid, which keeps other hosts' prunes apart
  (it expires after PRUNE_LOCK_TTL; backups never wait on it).
* Errors: boto3's are re-raised as one-line kvmkit errors (unreachable endpoint, missing bucket, refused
  credentials, bucket over quota); secrets are never part of a message. Retries are botocore's "standard"
  mode, 3 attempts (transient 5xx, throttling, dropped connections), set here rather than hidden in defaults.
* The bucket is not made on first use: a typo in `bucket` would silently start a new, empty target.
  `kvmkit backup target init NAME` makes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from kvmkit.backup.store import MAX_SMALL_BLOB, ChunkStore, flocked
from kvmkit.config import BackupTarget
from kvmkit.errors import EnvironmentProblem, InvalidInput, KvmkitError, NotFound, OperationFailed

LOCK_KEY = "lock"
ATTEMPTS = 3  # botocore "standard" retries: the first try and two more, with jittered backoff
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken", "ExpiredToken"}
MISSING = frozenset({"NoSuchKey", "404", "NotFound", "InvalidRange"})  # InvalidRange: a header read of an empty object
DEFAULT_ENV = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY"}


def credentials(cfg: BackupTarget, env: Mapping[str, str]) -> tuple[str, str]:
    """The target's keys: from the config, else from the environment variable it names, else AWS_*."""
    keys = []
    for field, value, var in (("access_key", cfg.access_key, cfg.access_key_env),
                              ("secret_key", cfg.secret_key, cfg.secret_key_env)):
        keys.append(value or env.get(var or DEFAULT_ENV[field], ""))
        if not keys[-1]:
            where = (f"environment variable {var} ({field}_env) is not set" if var else
                     f"set {field} or {field}_env, or export {DEFAULT_ENV[field]}")
            raise InvalidInput(f"backup target {cfg.name}: no S3 {field.replace('_', ' ')}: {where}")
    return keys[0], keys[1]


class S3Target(ChunkStore):
    """A bucket as a backup target: ChunkStore's primitives as S3 requests (see the module docstring for
    durability, locking and errors). Opening it reads the format marker, so a wrong endpoint, key or bucket
    fails here, before any backup starts."""

    def __init__(self, name: str, endpoint: str, bucket: str, access_key: str, secret_key: str, lock_dir: Path,
                 region: str = "us-east-1", create: bool = False, mark_legacy: bool = True) -> None:
        self.name, self.endpoint, self.bucket = name, endpoint, bucket
        self.location = f"bucket {bucket} on {endpoint}"
        self._secrets = (access_key, secret_key)
        self._client, self._errors = _client(name, endpoint, access_key, secret_key, region)
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_file = lock_dir / f"s3-{hashlib.sha256(f'{endpoint}/{bucket}'.encode()).hexdigest()[:16]}.lock"
        if create:
            self._create_bucket(region)
        # a GET, not HEAD: its error body says which (NoSuchBucket, SignatureDoesNotMatch …)
        self._check_format(mark_legacy)

    @classmethod
    def from_config(cls, cfg: BackupTarget, lock_dir: Path, env: Mapping[str, str] | None = None,
                    create: bool = False, mark_legacy: bool = True) -> S3Target:
        if not cfg.endpoint or not cfg.bucket:
            raise InvalidInput(f"backup target {cfg.name}: kind s3 needs endpoint and bucket")
        access_key, secret_key = credentials(cfg, os.environ if env is None else env)
        return cls(cfg.name, cfg.endpoint, cfg.bucket, access_key, secret_key, lock_dir, cfg.region, create,
                   mark_legacy)

    def _create_bucket(self, region: str) -> None:
        where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        with suppress(_Expected), self._calls("creating the bucket", ok=frozenset({"BucketAlreadyOwnedByYou"})):
            self._client.create_bucket(Bucket=self.bucket, **where)

    # errors ------------------------------------------------------------------------------------------------------
    @contextmanager
    def _calls(self, doing: str, key: str = "", ok: frozenset[str] = frozenset()) -> Iterator[None]:
        """Turn boto3's exceptions into one kvmkit line (no secrets, no traceback); error codes in `ok` (a missing
        key, for a read) raise _Expected for the caller to answer None/False."""
        try:
            yield
        except self._errors.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ok:
                raise _Expected from None
            raise self._client_error(exc, doing, key) from None
        except self._errors.BotoCoreError as exc:
            raise EnvironmentProblem(self._clean(f"backup target {self.name}: cannot talk to {self.endpoint} "
                                                 f"{doing}{f' {key}' if key else ''} ({exc})")) from None

    def _client_error(self, exc: Any, doing: str, key: str) -> KvmkitError:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), error.get("Message") or ""
        if code == "NoSuchBucket" or (code in MISSING and not key):
            return NotFound(f"backup target {self.name}: bucket {self.bucket} does not exist on {self.endpoint}; "
                            f"`kvmkit backup target init {self.name}` makes it")
        if code in DENIED:
            return InvalidInput(f"backup target {self.name}: {self.endpoint} refused access to bucket {self.bucket} "
                                f"({code}) {doing}{f' {key}' if key else ''}; check its access_key/secret_key and "
                                "the bucket's policy")
        if code == "QuotaExceeded":
            return OperationFailed(self._full_message(key or doing, "QuotaExceeded"))
        return OperationFailed(self._clean(f"backup target {self.name}: {doing}{f' {key}' if key else ''}: "
                                           f"{code} {message}".rstrip()))

    def _clean(self, text: str) -> str:
        for secret in filter(None, self._secrets):
            text = text.replace(secret, "***")
        return text

    # primitives --------------------------------------------------------------------------------------------------
    def _put(self, key: str, data: bytes, durable: bool = True) -> None:
        with self._calls("writing", key):
            # a sealed chunk is a bytearray (seal.py writes it in place); botocore's checksums want bytes
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data if isinstance(data, bytes) else bytes(data))

    def _get(self, key: str, limit: int = MAX_SMALL_BLOB, **options: str) -> bytes | None:
        """An object larger than limit is refused from its Content-Length, before its body is read."""
        try:
            with self._calls("reading", key, ok=MISSING):
                reply = self._client.get_object(Bucket=self.bucket, Key=key, **options)
                if int(reply.get("ContentLength") or 0) > limit:
                    reply["Body"].close()
                    raise OSError(errno.EFBIG, f"{reply['ContentLength']} bytes, more than {limit}")
                body = reply["Body"].read(limit + 1)
                if len(body) > limit:
                    raise OSError(errno.EFBIG, f"more than {limit} bytes")
                return body
        except _Expected:
            return None

    def _get_head(self, key: str, size: int) -> bytes | None:
        """Transport failures raise: garbage collection must not mistake an unread delta for one without a base."""
        return self._get(key, size, Range=f"bytes=0-{size - 1}")

    def _exists(self, key: str) -> bool:
        try:
            with self._calls("checking", key, ok=MISSING):
                self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except _Expected:
            return False

    def _mtime(self, key: str) -> float | None:
        """The object's LastModified (the storage's clock), None when absent."""
        try:
            with self._calls("checking", key, ok=MISSING):
                return self._client.head_object(Bucket=self.bucket, Key=key)["LastModified"].timestamp()
        except _Expected:
            return None

    def _touch(self, key: str) -> bool:
        """Copy the object onto itself (metadata replaced, so S3 accepts it): LastModified becomes the storage's
        now. False when it is gone."""
        try:
            with self._calls("touching", key, ok=MISSING):
                self._client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                                         MetadataDirective="REPLACE", Metadata={"kvmkit-touched": "1"})
            return True
        except _Expected:
            return False

    def _list_times(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
        with self._calls("listing", prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"], item["Size"], item["LastModified"].timestamp()

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
        with self._calls("listing", prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"], item["Size"]

    def _delete(self, keys: list[str]) -> None:
        if len(keys) == 1:  # missing keys are not an error in S3
            with self._calls("deleting", keys[0]):
                self._client.delete_object(Bucket=self.bucket, Key=keys[0])
            return
        if not keys:
            return
        with self._calls("deleting", keys[0]):
            done = self._client.delete_objects(Bucket=self.bucket,
                                               Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        for failure in done.get("Errors", [])[:1]:
            raise OperationFailed(f"backup target {self.name}: deleting {failure.get('Key')}: "
                                  f"{failure.get('Code')} {failure.get('Message') or ''}".rstrip())

    # locking -----------------------------------------------------------------------------------------------------
    @contextmanager
    def locked(self, exclusive: bool, wait: bool = True) -> Iterator[None]:
        """Local flock (this host's processes), then the `lock` object (other hosts; see the module docstring)."""
        with flocked(self._lock_file, exclusive, wait, f"backup target {self.name} is busy (another backup or "
                                                         "prune on this host)"):
            if not exclusive:  # a backup announces itself with its lease (leases.py), and never waits on a prune
                yield
                return
            holder = self._lock_holder()
            if holder is not None and not _stale(holder):
                raise EnvironmentProblem(
                    f"backup target {self.name} is locked by a prune on {holder.get('host')} (pid "
                    f"{holder.get('pid')}) since {holder.get('since')}; if that process is gone, delete object "
                    f"{LOCK_KEY!r} from bucket {self.bucket}")
            self._put(LOCK_KEY, json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "epoch": time.time(),
                                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
            try:
                yield
            finally:
                self._delete([LOCK_KEY])

    def _lock_holder(self) -> dict | None:
        blob = self._get(LOCK_KEY)
        if blob is None:
            return None
        try:
            holder = json.loads(blob)
        except ValueError:
            holder = None
        return holder if isinstance(holder, dict) else {"host": "?", "pid": "?", "since": "?"}


class _Expected(Exception):
    """An error code the caller asked for (a missing key on a read): answered as None / False, not raised."""


PRUNE_LOCK_TTL = 1800.0  # a prune's record older than this is stale whoever wrote it: it only keeps prunes apart


def _stale(holder: dict) -> bool:
    """A lock record of this host whose process is gone (killed prune), or any record older than PRUNE_LOCK_TTL:
    correctness does not rest on it (leases and the GC's rules do), so a killed prune never blocks forever."""
    epoch = holder.get("epoch")
    if isinstance(epoch, int | float) and time.time() - epoch > PRUNE_LOCK_TTL:
        return True
    if holder.get("host") != os.uname().nodename or not isinstance(holder.get("pid"), int):
        return False
    try:
        state = Path(f"/proc/{holder['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _client(name: str, endpoint: str, access_key: str, secret_key: str, region: str) -> tuple[Any, Any]:
    """A boto3 S3 client for a path-style endpoint, and botocore's exceptions module (imported only here, so
    kvmkit runs without boto3 until an S3 target is used)."""
    try:
        import boto3
        from botocore import exceptions
        from botocore.config import Config
    except ImportError:
        raise EnvironmentProblem(f"backup target {name} is an S3 target and boto3 is not installed: "
                                 "pip install 'kvmkit[s3]' (or apt-get install python3-boto3)") from None
    options: dict[str, Any] = {"region_name": region, "s3": {"addressing_style": "path"},
                               "retries": {"max_attempts": ATTEMPTS, "mode": "standard"},
                               "connect_timeout": 5, "read_timeout": 60, "max_pool_connections": 16}
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        # botocore ≥ 1.36 adds CRC trailers to every PUT by default, which S3-compatible stores such as radosgw
        # before Reef refuse; chunks carry their own sha256 anyway
        options.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    try:
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                                                aws_secret_access_key=secret_key, config=Config(**options))
    except ValueError as exc:
        raise InvalidInput(f"backup target {name}: endpoint {endpoint!r}: {exc}") from None
    return client, exceptions
