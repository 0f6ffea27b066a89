"""Deciding whether and how a target may be benchmarked: pure rules over a `TargetProbe`.

Every suite writes (fill, precondition, random writes), so the rules are about not destroying anything
by accident: a file kvmkit did not create, or any block device, is written only when `--destructive`
names exactly that path; a mounted device is never written. Then: enough space, O_DIRECT works, and the
working set is big enough that no cache can serve it (or a loud warning says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kvmkit.bench.probe import TargetProbe
from kvmkit.bench.units import format_size
from kvmkit.errors import Conflict, InvalidInput, NotFound

SPACE_MARGIN = 64 * 1024 * 1024  # leave the filesystem some room of its own
# Linux ≥ 6.6 accepts O_DIRECT on tmpfs, so the O_DIRECT probe alone does not catch these.
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"}


@dataclass(frozen=True)
class TargetPlan:
    path: str
    kind: str  # "file" or "block"
    size_bytes: int
    create: bool  # the file does not exist yet: kvmkit creates it (and removes it unless kept)
    needs_fill: bool  # not yet filled with random data over the whole working set
    destructive: bool
    filesystem: str | None = None
    warnings: list[str] = field(default_factory=list)


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def plan_target(probe: TargetProbe, size_bytes: int | None, destructive: str | None) -> TargetPlan:
    """The plan for a run, or the one error that says why not. Nothing has been written when this raises."""
    path = probe.path
    if destructive is not None and not _same_path(destructive, path):
        raise InvalidInput(f"--destructive {destructive} does not name the target {path}; it must, exactly")
    if probe.kind == "missing" and not probe.parent_exists:
        raise NotFound(f"target {path} does not exist, nor does its folder")
    if probe.kind in ("dir", "other"):
        raise InvalidInput(
            f"target {path} is a {'directory' if probe.kind == 'dir' else 'special file'}; "
            "give a file path (created if missing) or a block device"
        )
    if probe.direct_io is False:
        raise InvalidInput(
            f"{path}: the filesystem ({probe.filesystem or '?'}) refuses O_DIRECT, so fio would "
            "measure the page cache; use a target on a real disk"
        )
    if probe.filesystem in MEMORY_FILESYSTEMS:
        raise InvalidInput(
            f"{path} is on {probe.filesystem}, which lives in RAM: fio would measure memory, not storage"
        )
    warnings = list(probe.notes)
    if probe.kind == "block":
        plan = _plan_block(probe, size_bytes, destructive)
    else:
        plan = _plan_file(probe, size_bytes, destructive)
    cache = 2 * probe.ram_bytes
    if probe.ram_bytes and plan.size_bytes < cache:
        warnings.append(
            f"WORKING SET {format_size(plan.size_bytes)} IS SMALLER THAN 2 × RAM "
            f"({format_size(cache)}): a cache below O_DIRECT (device, host page cache of a VM disk, "
            "controller) may serve it; results can be optimistic"
        )
    return TargetPlan(**{**plan.__dict__, "warnings": warnings + plan.warnings})


def _plan_block(probe: TargetProbe, size_bytes: int | None, destructive: str | None) -> TargetPlan:
    path = probe.path
    if probe.mounted_at:
        raise Conflict(f"{path} is in use (mounted at {probe.mounted_at}); kvmkit never writes to a mounted device")
    if destructive is None:
        held = f"holds {probe.signature}" if probe.signature else "may hold data"
        raise Conflict(
            f"{path} is a block device that {held}; the benchmark overwrites it: "
            f"pass --destructive {path} to allow that"
        )
    size = size_bytes or probe.size_bytes
    if size > probe.size_bytes:
        raise InvalidInput(f"--size {format_size(size)} is larger than {path} ({format_size(probe.size_bytes)})")
    return TargetPlan(path, "block", size, create=False, needs_fill=True, destructive=True)


def _plan_file(probe: TargetProbe, size_bytes: int | None, destructive: str | None) -> TargetPlan:
    path = probe.path
    exists = probe.kind == "file"
    if probe.mounted_at:
        raise Conflict(f"{path} is in use (backs {probe.mounted_at}); detach it before benchmarking on it")
    if exists and not probe.owned and destructive is None:
        raise Conflict(
            f"{path} holds {format_size(probe.size_bytes)} of data kvmkit did not write; the benchmark "
            f"overwrites it: pass --destructive {path} to allow that"
        )
    size = size_bytes or (probe.size_bytes if exists and probe.size_bytes else 2 * probe.ram_bytes)
    growth = max(0, size - (probe.size_bytes if exists else 0))
    free = probe.free_bytes or 0
    if growth and growth + SPACE_MARGIN > free:
        raise InvalidInput(
            f"too little space for {path}: needs {format_size(growth)} more, "
            f"{format_size(free)} free; pass a smaller --size"
        )
    return TargetPlan(
        path,
        "file",
        size,
        create=not exists,
        needs_fill=probe.filled_bytes < size,
        destructive=destructive is not None,
        filesystem=probe.filesystem,
    )
