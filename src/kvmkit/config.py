"""kvmkit's settings: one pydantic model, read from a TOML file and overridden by KVMKIT_* variables.

Where the file lives: $KVMKIT_CONFIG, else /etc/kvmkit/config.toml, else built-in defaults. Every field can be
overridden by an environment variable named KVMKIT_<FIELD> (upper case), which is how the tests point kvmkit at
their own lab without touching the operator's file.

The file can make kvmkit run commands (`libvirt_uri = "qemu+ext://…?command=…"`) as root, so it is trusted only
the way ssh trusts its files: a regular file of at most 1 MiB, owned by root or the user running kvmkit, writable
by nobody else, in folders nobody else may rename things in (world-writable folders only with the sticky bit).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvmkit.errors import InvalidInput, validated

DEFAULT_CONFIG_PATH = Path("/etc/kvmkit/config.toml")
MAX_CONFIG_BYTES = 1 << 20


class CephSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conf: Path | None = None  # ceph.conf; None: take monitors from the domain XML or the lab
    client_id: str = "admin"
    keyring: Path | None = None


class StorPoolSettings(BaseModel):
    """The StorPool API: by default from StorPool's own /etc/storpool.conf (SP_API_HTTP_HOST, SP_API_HTTP_PORT,
    SP_AUTH_TOKEN), read by the `storpool` binding's loader; host/port/token here take precedence."""

    model_config = ConfigDict(extra="forbid")
    conf: Path = Path("/etc/storpool.conf")
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    token: str | None = Field(default=None, repr=False)
    token_env: str | None = None  # read the token from this environment variable instead
    timeout_s: float = Field(default=10.0, gt=0, le=300)  # per API call (transient retries: storpool_api.py)
    client_id: int | None = Field(default=None, ge=1)  # this host's client id (else SP_OURID from the conf)
    multi_cluster: bool = False  # calls by MultiCluster/ paths (spapi.Api(multiCluster=True)), as CloudStack does


class BackupTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["dir", "s3"] = "dir"
    path: Path | None = None  # kind=dir
    endpoint: str | None = None  # kind=s3: http(s)://host:port, path-style addressing
    bucket: str | None = None
    region: str = "us-east-1"  # radosgw ignores it; AWS wants the bucket's region for signing
    # keys: from here, else from the environment variables named by *_env, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    access_key: str | None = Field(default=None, repr=False)
    secret_key: str | None = Field(default=None, repr=False)
    access_key_env: str | None = None
    secret_key_env: str | None = None
    compression: Literal["zstd", "zlib", "none"] = "zstd"  # level 1, per 64 KiB; incompressible data stays raw
    # a new target's keys (backup/keys.py): None = repokey when a passphrase source below is set, else none;
    # an existing target's own marker decides, and must agree with this when it is set
    encryption: Literal["repokey", "keyfile", "none"] | None = None
    passphrase_file: Path | None = None  # the passphrase, in a 0600 file (never on the command line)
    passphrase_env: str | None = None  # or the environment variable holding it; else $CREDENTIALS_DIRECTORY
    gc_margin_s: float | None = Field(default=None, ge=0)  # no chunk younger than this is swept (None: 900 s)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state_dir: Path = Path("/var/lib/kvmkit")
    libvirt_uri: str = "qemu:///system"
    catalog: Path | None = None  # default: <state_dir>/catalog.sqlite
    lab_dir: Path | None = None  # default: <state_dir>/lab
    freeze_timeout_s: float = Field(default=10.0, gt=0, le=600)  # watchdog deadline: thaw no later than this
    # file disks with more extents than this get the O(1) overlay barrier instead of a reflink inside the freeze
    reflink_extent_limit: int = Field(default=2048, ge=0)
    # how the O(1) barrier is taken: one QMP transaction on overlay nodes QEMU opened before the freeze (default), or
    # libvirt's disk-only external snapshot (no QMP behind libvirt's back, but a longer freeze):
    # snapshot/drivers/file/overlay.py
    overlay_barrier: Literal["libvirt", "qmp"] = "qmp"
    ceph: CephSettings = CephSettings()
    storpool: StorPoolSettings | None = None  # None: /etc/storpool.conf if it exists, else no StorPool driver
    backup_to_secondary: bool = False
    backup_targets: list[BackupTarget] = []

    @property
    def catalog_path(self) -> Path:
        return self.catalog or self.state_dir / "catalog.sqlite"

    @property
    def lab_path(self) -> Path:
        return self.lab_dir or self.state_dir / "lab"


def _env_overrides(env: dict[str, str]) -> dict[str, str]:
    scalar = {"state_dir", "libvirt_uri", "catalog", "lab_dir", "freeze_timeout_s", "backup_to_secondary",
              "reflink_extent_limit", "overlay_barrier"}
    return {name: env[f"KVMKIT_{name.upper()}"] for name in scalar if f"KVMKIT_{name.upper()}" in env}


def load(path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from the file (if any) with environment overrides applied on top."""
    env = dict(os.environ) if env is None else env
    path = path or Path(env.get("KVMKIT_CONFIG", DEFAULT_CONFIG_PATH))
    data: dict = {}
    read = _read_config(path)
    if read is not None:
        text, mode = read
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{path}: not valid TOML: {str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise InvalidInput(f"{path}: not valid TOML: nested too deeply") from None
        secret = next(secret_fields(data), None)
        if secret is not None and mode & 0o077:
            raise InvalidInput(f"config file {path} holds a secret ({secret}) and is readable by group or others "
                               f"(mode {mode:04o}): refused; chmod 600 {path}")
    elif "KVMKIT_CONFIG" in env:
        raise InvalidInput(f"config file {path} (from KVMKIT_CONFIG) does not exist")
    overrides = _env_overrides(env)
    if overrides:  # a bad override names its variable, not a file that does not say it
        try:
            Settings.model_validate(overrides)
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0])
            raise InvalidInput(f"environment variable KVMKIT_{field.upper()}={overrides[field]!r}: "
                               f"{exc.errors()[0]['msg']}") from None
    data.update(overrides)
    if "KVMKIT_STORPOOL_CONF" in env:  # tests point kvmkit at a storpool.conf of their own (the fake API's)
        data["storpool"] = {**data.get("storpool", {}), "conf": env["KVMKIT_STORPOOL_CONF"]}
    return validated(Settings, data, path)


SECRET_KEYS = frozenset({"token", "secret_key", "password", "passphrase"})


def secret_fields(data: object, where: str = "") -> Iterator[str]:
    """Where a parsed config holds a secret itself (not the name of a variable or file that holds it)."""
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{where}.{key}" if where else str(key)
            if key in SECRET_KEYS and isinstance(value, str) and value:
                yield here
            else:
                yield from secret_fields(value, here)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from secret_fields(item, f"{where}[{i}]")


def read_config_text(path: Path) -> str | None:
    read = _read_config(path)
    return None if read is None else read[0]


def _read_config(path: Path) -> tuple[str, int] | None:
    """The file's text and permission bits, or None when it does not exist; InvalidInput when it is not something
    to trust: not a regular file (a FIFO or /dev/zero would hang or fill memory), too large, writable by others,
    or owned by someone else — checked on the opened file (fstat), so a swap between check and read changes nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"config file {path}: cannot open it ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"config file {path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise InvalidInput(f"config file {path} has {info.st_size} bytes; at most {MAX_CONFIG_BYTES} are read")
        _check_trusted(path, info)
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"config file {path} grew past {MAX_CONFIG_BYTES} bytes while read")
    try:
        return data.decode(), stat.S_IMODE(info.st_mode)
    except UnicodeDecodeError:
        raise InvalidInput(f"config file {path} is not UTF-8 text") from None


def _check_trusted(path: Path, info: os.stat_result) -> None:
    """ssh's StrictModes: owner root or us, no group/other write on the file, nor on any folder above it unless
    that folder is sticky (like /tmp: others may not rename what they do not own)."""
    me = os.geteuid()
    if info.st_uid not in (0, me):
        raise InvalidInput(f"config file {path} is owned by uid {info.st_uid}, not by root"
                           f"{'' if me == 0 else ' or you'}: refused (it could make kvmkit run commands)")
    if info.st_mode & 0o022:
        raise InvalidInput(f"config file {path} is writable by group or others (mode "
                           f"{stat.S_IMODE(info.st_mode):04o}): refused (it could make kvmkit run commands); "
                           f"chmod go-w {path}")
    for folder in Path(os.path.realpath(path)).parents:
        try:
            folder_info = os.stat(folder)
        except OSError:
            continue
        sticky = folder_info.st_mode & stat.S_ISVTX
        if folder_info.st_uid not in (0, me) or (folder_info.st_mode & 0o022 and not sticky):
            raise InvalidInput(f"config file {path}: folder {folder} is writable by others or owned by uid "
                               f"{folder_info.st_uid}: refused (the file could be replaced)")
