"""How kvmkit names and tags StorPool snapshots, within the binding's name rules and StorPool's 200-byte budget.

* Name: `kvmkit--<volume>--<snapshot name>`; for an unnamed volume (CloudStack's, pve-storpool's: addressed only as
  `~<globalId>`) the volume part is its globalId without the `~`, which the binding's name rule admits
  (sptypes.VolumeSnapshotDesc.name is a VolumeName: VOLUME_NAME_REGEX, shorter than VOLUME_NAME_SIZE = 200).
* Tags: `kvmkit=<catalog id>` (whose), `kvmkit-vol=<volume globalId>` (of which volume: survives a rename, and is
  checked before a delete), then as the budget allows `kvmkit-vm=<VM uuid>`, `kvmkit-snap=<name>` and
  `kvmkit-role=snapshot`. A revert's safety snapshot always carries `kvmkit-role=prerevert`.
* Budget: StorPool's documentation — "The volume name including tags cannot exceed 200 bytes." kvmkit counts the
  name plus every tag key and value in UTF-8 bytes and drops optional tags (role, then snap, then vm) until it
  fits; if the name and the tags ownership needs do not fit, `plan` refuses before any freeze.
"""

from __future__ import annotations

import contextlib
import io
import re

from kvmkit.errors import InvalidInput

with contextlib.redirect_stderr(io.StringIO()):
    from storpool import sptypes

PREFIX = "kvmkit--"
TAG_OWNER = "kvmkit"  # the catalog id (PlanOptions.owner): which kvmkit catalog made it
TAG_VM = "kvmkit-vm"  # the VM uuid (PlanOptions.vm_uuid)
TAG_SNAP = "kvmkit-snap"
TAG_VOLUME = "kvmkit-vol"  # the volume's globalId: survives a rename of the volume
TAG_ROLE = "kvmkit-role"  # "snapshot", or "prerevert" for a revert's safety snapshot
ROLE_SNAPSHOT = "snapshot"
ROLE_PREREVERT = "prerevert"
NAME_AND_TAGS_BYTES = 200
OPTIONAL = (TAG_ROLE, TAG_SNAP, TAG_VM)  # dropped in this order when the budget is short
_NAME_RE = re.compile(sptypes.VOLUME_NAME_REGEX)


def kvmkit_named(name: str) -> bool:
    return name.startswith(PREFIX)


def snapshot_name(volume_label: str, tag: str) -> str:
    """`kvmkit--<volume>--<tag>`, refused (InvalidInput) if the binding's name rule would refuse it."""
    name = f"{PREFIX}{volume_label}--{tag}"
    if not _NAME_RE.match(name) or len(name) >= sptypes.VOLUME_NAME_SIZE:
        raise InvalidInput(f"StorPool snapshot name {name[:60]}… is not a valid StorPool name (letters, digits, "
                           f"_-.: and shorter than {sptypes.VOLUME_NAME_SIZE} characters); use a shorter snapshot "
                           "name")
    return name


def used_bytes(name: str, tags: dict[str, str]) -> int:
    return len(name.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in tags.items())


def full_tags(owner: str | None, snap_name: str, volume_id: str, vm_uuid: str | None, role: str) -> dict[str, str]:
    """kvmkit's tags on a snapshot; no `kvmkit` tag without a catalog id (such a snapshot is "unknown")."""
    tags = {TAG_OWNER: owner or "", TAG_VOLUME: volume_id, TAG_ROLE: role, TAG_VM: vm_uuid or "",
            TAG_SNAP: snap_name}
    return {k: v for k, v in tags.items() if v}


def fit(name: str, tags: dict[str, str]) -> dict[str, str]:
    """The tags trimmed to the budget (deterministic: the same in plan, snapshot and a retry)."""
    tags = dict(tags)
    for key in OPTIONAL:
        if used_bytes(name, tags) <= NAME_AND_TAGS_BYTES:
            break
        if key == TAG_ROLE and tags.get(TAG_ROLE) == ROLE_PREREVERT:
            continue  # a safety snapshot must say so
        tags.pop(key, None)
    used = used_bytes(name, tags)
    if used > NAME_AND_TAGS_BYTES:
        raise InvalidInput(f"StorPool snapshot {name}: its name and the tags kvmkit needs take {used} bytes, more "
                           f"than StorPool's {NAME_AND_TAGS_BYTES}; use a shorter snapshot name")
    return tags
