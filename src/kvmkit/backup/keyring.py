"""Opening a target with its keys: the marker's mode checked against what this host knows, the keys loaded.

The format marker (kvmkit-backup.json) lives in the storage, so it is not trusted alone: each host records what
it first saw of a target (`<state_dir>/backup-keys/known/<location>.json`: repository id and mode) and refuses a
marker that later says otherwise (keys removed, another repository id: a downgrade or a swapped repository). A
config `encryption = "…"` pins the mode even on a host's first contact. A new target is marked here, with its
keys, so the marker never exists without them.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from kvmkit.backup import keys as K
from kvmkit.backup.store import MARKER, ChunkStore
from kvmkit.backup.tombstones import Tombstones
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed

log = logging.getLogger(__name__)
Ask = Callable[[str], bytes]
_REPO_ID = re.compile(r"^[0-9a-f]{32}$")


def tty_ask(prompt: str) -> bytes:
    return getpass.getpass(prompt).encode()


def default_ask() -> Ask | None:
    return tty_ask if sys.stdin.isatty() else None


def _known_path(settings: Settings, store: ChunkStore) -> Path:
    where = hashlib.sha256(store.location.encode()).hexdigest()[:24]
    return K.key_dir(settings.state_dir) / "known" / f"{where}.json"


def _known(settings: Settings, store: ChunkStore) -> dict | None:
    """What this host recorded of the target; None when nothing (or the state dir cannot hold records: then
    only the config's `encryption` pins the mode, and the keys themselves cannot be found either)."""
    try:
        blob = K.read_small(_known_path(settings, store), 4096, "known target record")
        data = json.loads(blob) if blob is not None else None
    except (ValueError, EnvironmentProblem):
        data = None
    return data if isinstance(data, dict) else None


def _remember(settings: Settings, store: ChunkStore, record: dict, *, replace: bool = False) -> None:
    """What this host first saw of the target; `replace`: a new repository made on purpose (`target init` where the
    marker was gone) becomes what the host knows."""
    if replace or _known(settings, store) is None:
        try:
            K.write_private(_known_path(settings, store), json.dumps(record).encode(), replace=True)
        except OSError as exc:
            log.warning("backup target %s: cannot record its mode on this host (%s)", store.name, exc.strerror)


def _secret(cfg: BackupTarget, ask: Ask | None, why: str) -> bytes:
    phrase = K.passphrase(cfg)
    if phrase is None and ask is not None:
        phrase = ask(f"passphrase of backup target {cfg.name}: ")
    if not phrase:
        raise InvalidInput(f"backup target {cfg.name}: {why} needs its passphrase: set passphrase_file or "
                           "passphrase_env in its config section, or a systemd credential "
                           f"kvmkit-backup-{cfg.name}")
    return phrase


def attach(store: ChunkStore, settings: Settings, cfg: BackupTarget, init: str | None = None,
           ask: Ask | None = None) -> ChunkStore:
    """Load the target's keys into the store (or make a new target's); refuse a marker this host or the config
    contradicts. init: the mode `target init --encryption` asked for (None: a command using the target)."""
    known, marker = _known(settings, store), store.marker
    if marker is None:
        if known is not None and init is None:
            raise InvalidInput(f"backup target {store.name}: its format marker is gone, but this host knew it as "
                               f"repository {known.get('repo_id', 'without keys')}: refusing to start a new one "
                               "in its place (`kvmkit backup target init` does it on purpose)")
        return _create(store, settings, cfg, init, ask)
    mode = marker.get("encryption") if marker.get("format") == 2 else "legacy"
    repo_id = marker.get("repo_id") if mode != "legacy" else None
    if mode != "legacy" and (mode not in K.MODES or not isinstance(repo_id, str) or not _REPO_ID.match(repo_id)):
        raise InvalidInput(f"backup target {store.name}: {MARKER} names no valid mode and repository id")
    if known is not None and (known.get("mode"), known.get("repo_id")) != (mode, repo_id):
        raise InvalidInput(f"backup target {store.name}: the repository now says {mode} {repo_id or ''}, this host "
                           f"knew it as {known.get('mode')} {known.get('repo_id') or ''}: refusing (keys removed or "
                           "the repository swapped)")
    if cfg.encryption is not None and cfg.encryption != mode:
        raise InvalidInput(f"backup target {store.name}: the config says encryption {cfg.encryption}, the "
                           f"repository is {mode}")
    if init is not None and init != mode:
        raise InvalidInput(f"backup target {store.name} exists already ({mode}); a target's mode does not "
                           "change: make a new target and back up there (docs/backup.md)")
    if mode != "legacy":
        assert isinstance(repo_id, str)
        store.keys = load(store, settings, cfg, repo_id, mode, ask)
        store.tombstones = tombstones_of(settings, store)
    _remember(settings, store, {"mode": mode, "repo_id": repo_id})
    return store


def tombstones_of(settings: Settings, store: ChunkStore) -> Tombstones:
    """This host's memory of the target's deleted backups, kept beside its record of the target."""
    return Tombstones(K.key_dir(settings.state_dir) / "tombstones" / _known_path(settings, store).stem)


def record_of(store: ChunkStore, settings: Settings, repo_id: str, mode: str) -> K.KeyRecord | K.MacKey:
    """The wrapped key (repokey: from the repository; keyfile, none: from this host)."""
    if mode == "repokey":
        try:
            blob = store._get(K.REPOKEY, K.MAX_KEY_RECORD)
        except OSError as exc:
            raise InvalidInput(f"backup target {store.name}: {K.REPOKEY} is unreadable ({exc.strerror})") from None
        where = f"backup target {store.name}: {K.REPOKEY}"
        if blob is None:
            raise NotFound(f"{where} is missing (`kvmkit backup key import` puts an exported copy back)")
    else:
        path = K.host_key_path(settings.state_dir, repo_id, mode)
        blob = K.read_small(path, K.MAX_KEY_RECORD, "key file")
        where = str(path)
        if blob is None:
            raise NotFound(f"backup target {store.name}: this host has no key for repository {repo_id} ({mode}): "
                           "`kvmkit backup key import` it from a host that has")
    record = K.parse_record(blob, where)
    if record.repo_id != repo_id or record.mode != mode:
        raise InvalidInput(f"{where}: a key of repository {record.repo_id} ({record.mode}), not {repo_id} ({mode})")
    return record


def load(store: ChunkStore, settings: Settings, cfg: BackupTarget, repo_id: str, mode: str,
         ask: Ask | None) -> K.RepoKeys:
    record = record_of(store, settings, repo_id, mode)
    if isinstance(record, K.MacKey):
        return K.RepoKeys(repo_id, mode, mac_key=bytes.fromhex(record.mac_key))
    return K.unwrap(record, _secret(cfg, ask, "opening it"), store.name)


def _create(store: ChunkStore, settings: Settings, cfg: BackupTarget, init: str | None, ask: Ask | None) -> ChunkStore:
    mode = init or cfg.encryption
    if mode is None:  # a target first used by a backup, not made by `target init`: encrypted if it can be
        mode = "repokey" if K.passphrase(cfg) is not None else "none"
        if mode == "none":
            log.info("backup target %s: made unencrypted (no passphrase configured); `kvmkit backup target "
                        "init --encryption repokey` makes encrypted ones", store.name)
    repo_id = K.new_repo_id()
    keys = K.new_keys(repo_id, mode)
    if mode == "none":
        K.write_private(K.host_key_path(settings.state_dir, repo_id, mode), K.record_json(K.mac_record(keys)))
    else:
        assert keys.enc_key is not None and keys.id_key is not None
        record = K.wrap(repo_id, mode, keys.enc_key, keys.id_key, _secret(cfg, ask, "a new encrypted target"))
        if mode == "repokey":
            store._put(K.REPOKEY, K.record_json(record))
        else:
            K.write_private(K.host_key_path(settings.state_dir, repo_id, mode), K.record_json(record))
    marker = {"format": 2, "tool": "kvmkit", "repo_id": repo_id, "encryption": mode}
    if store._get(MARKER) is not None:  # another host marked it meanwhile: use theirs
        raise OperationFailed(f"backup target {store.name} was initialised by another host meanwhile: run again")
    store._put(MARKER, json.dumps(marker).encode())
    store.marker, store.keys = marker, keys
    store.tombstones = tombstones_of(settings, store)
    _remember(settings, store, {"mode": mode, "repo_id": repo_id}, replace=init is not None)
    return store
