"""Which target a command uses: the named one from config, else the only one configured."""

from __future__ import annotations

from kvmkit.backup.store import DirTarget
from kvmkit.config import BackupTarget, Settings
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound


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


def open_target(settings: Settings, name: str | None = None) -> DirTarget:
    target = target_config(settings, name)
    if target.kind == "s3":
        # Not built: this machine has no radosgw to test against, and an untested upload path is worse than none.
        raise EnvironmentProblem(f"backup target {target.name}: S3 targets are not supported yet; mount the "
                                 "storage (NFS) and use kind = \"dir\"")
    if target.path is None:
        raise InvalidInput(f"backup target {target.name}: kind dir needs path")
    return DirTarget(target.name, target.path)


def compression_of(settings: Settings, name: str) -> str:
    return target_config(settings, name).compression
