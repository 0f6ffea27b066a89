"""Which target a command uses: the named one from config, else the only one configured; and making one."""

from __future__ import annotations

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


def open_target(settings: Settings, name: str | None = None, create: bool = False) -> ChunkStore:
    """The target, checked (reachable, format marker); create: make the folder or bucket first (`target init`)."""
    target = target_config(settings, name)
    if target.kind == "s3":
        from kvmkit.backup.s3 import S3Target  # boto3 is imported only for S3 targets

        return S3Target.from_config(target, settings.state_dir / "locks", create=create)
    if target.path is None:
        raise InvalidInput(f"backup target {target.name}: kind dir needs path")
    if create:
        target.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return DirTarget(target.name, target.path)


def compression_of(settings: Settings, name: str) -> str:
    return target_config(settings, name).compression
