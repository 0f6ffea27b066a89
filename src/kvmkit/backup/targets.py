"""Which target a command uses: the named one from config, else the only one configured; and making one."""

from __future__ import annotations

from kvmkit.backup import keyring
from kvmkit.backup.keyring import Ask
from kvmkit.backup.store import ChunkStore, DirTarget
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import InvalidInput, NotFound


def target_config(settings: Settings, name: str | None) -> BackupTarget:
    targets = settings.backup_targets
    if not targets:
        raise InvalidInput('no backup target configured: add [[backup_targets]] name = "nfs1", path = "/mnt/backup" '
                           "to the config")
    if name is None:
        if len(targets) > 1:
            raise InvalidInput(f"several backup targets are configured ({', '.join(t.name for t in targets)}): "
                               "name one with --target")
        return targets[0]
    for target in targets:
        if target.name == name:
            return target
    raise NotFound(f"no backup target named {name!r} (configured: {', '.join(t.name for t in targets)})")


def open_target(settings: Settings, name: str | None = None, create: bool = False, init: str | None = None,
                ask: Ask | None = None) -> ChunkStore:
    """The target, checked (reachable, format marker) with its keys loaded (keyring.py); create: make the folder
    or bucket first, init: with keys of this mode (`target init`). ask: a passphrase prompt (default: on a TTY)."""
    target = target_config(settings, name)
    store: ChunkStore
    if target.kind == "s3":
        from kvmkit.backup.s3 import S3Target  # boto3 is imported only for S3 targets

        store = S3Target.from_config(target, settings.state_dir / "locks", create=create, mark_legacy=False)
    else:
        if target.path is None:
            raise InvalidInput(f"backup target {target.name}: kind dir needs path")
        if create:
            target.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = DirTarget(target.name, target.path, mark_legacy=False)
    store.gc_margin = target.gc_margin_s
    return keyring.attach(store, settings, target, init, ask if ask is not None else keyring.default_ask())


def compression_of(settings: Settings, name: str) -> str:
    return target_config(settings, name).compression
