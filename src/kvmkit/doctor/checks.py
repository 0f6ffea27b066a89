"""The pure core of `kvmkit doctor`: observations (plain data the probes gathered) → findings with their fix.

No I/O here, so every severity rule is unit-tested on hand-made observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

from kvmkit.doctor.model import Finding, Severity

if TYPE_CHECKING:
    from kvmkit.virt.inventory import AgentInfo, LibvirtInfo

AGENT_CHANNEL = "org.qemu.guest_agent.0"
FREEZE_COMMAND = "guest-fsfreeze-freeze"
CHANNEL_FIX = (f"add <channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel> to the domain "
               "and restart it, or snapshot it with --crash-consistent")
AGENT_FIX = "start qemu-guest-agent in the guest (systemctl enable --now qemu-guest-agent), or use --crash-consistent"
MIN_FREE_FRACTION = 0.10
MIN_FREE_BYTES = 1 << 30
CLOCK_SLACK = timedelta(minutes=5)
EARLIEST_SANE = datetime(2024, 1, 1).astimezone()


BINDINGS = (  # module, apt package, what needs it, severity when missing
    ("libvirt", "python3-libvirt", "every VM operation", "fail"),
    ("rbd", "python3-rbd", "Ceph RBD disks", "warn"),
    ("rados", "python3-rados", "Ceph RBD disks", "warn"),
    ("nbd", "python3-libnbd", "backups of file disks by dirty bitmap", "warn"),
)


def binding_findings() -> list[Finding]:
    """Debian's Python bindings kvmkit uses, found or not (a venv without --system-site-packages sees none)."""
    import importlib.util

    found = []
    for module, package, needed_by, severity in BINDINGS:
        if importlib.util.find_spec(module) is not None:
            found.append(Finding(check="bindings", subject=module, severity=Severity.OK,
                                 message=f"{module} Python bindings found"))
        else:
            found.append(Finding(check="bindings", subject=module, severity=Severity(severity),
                                 message=f"{module} Python bindings missing: needed for {needed_by}",
                                 fix=f"apt-get install {package} (a venv needs --system-site-packages)"))
    return found


def libvirt_finding(uri: str, info: LibvirtInfo | None, error: str) -> Finding:
    if info is None:
        return Finding(check="libvirt", subject=uri, severity=Severity.FAIL, message=f"not reachable: {error}",
                       fix="start libvirtd (systemctl start libvirtd) or pass the right URI with --connect")
    return Finding(check="libvirt", subject=uri, severity=Severity.OK,
                   message=f"libvirt {info.lib_version}, hypervisor {info.hypervisor_version}")


def agent_channel_state(xml: str) -> str | None:
    """The guest-agent channel's state from the live XML: None (no channel), "connected", "disconnected", ""."""
    for target in ET.fromstring(xml).findall("./devices/channel/target"):
        if target.get("name") == AGENT_CHANNEL:
            return target.get("state", "")
    return None


def agent_findings(vm: str, channel_state: str | None, agent: AgentInfo) -> list[Finding]:
    """Channel present and answering (guest-info), then fsfreeze allowed: what a quiesced snapshot needs."""
    if channel_state is None:
        return [Finding(check="agent", subject=vm, severity=Severity.FAIL, message="no guest-agent channel",
                        fix=CHANNEL_FIX)]
    if not agent.answered:
        state = f"channel {channel_state}" if channel_state else "channel present"
        return [Finding(check="agent", subject=vm, severity=Severity.FAIL,
                        message=f"{state}, agent not answering: {agent.error}", fix=AGENT_FIX)]
    found = [Finding(check="agent", subject=vm, severity=Severity.OK, message=f"qemu-ga {agent.version} answers")]
    if FREEZE_COMMAND in agent.enabled_commands:
        found.append(Finding(check="fsfreeze", subject=vm, severity=Severity.OK, message=f"{FREEZE_COMMAND} enabled"))
    else:
        found.append(Finding(check="fsfreeze", subject=vm, severity=Severity.FAIL,
                             message=f"the agent does not allow {FREEZE_COMMAND}",
                             fix="remove guest-fsfreeze-* from the agent's block-rpcs/--blacklist in the guest "
                                 "(/etc/qemu/qemu-ga.conf), or use --crash-consistent"))
    return found


def reflink_finding(pool: Path, vms: list[str], supported: bool | None, error: str = "") -> Finding:
    users = ", ".join(sorted(vms))
    if supported:
        return Finding(check="reflink", subject=str(pool), severity=Severity.OK,
                       message=f"FICLONE works (disks of {users})")
    why = error or "FICLONE unsupported on this filesystem"
    return Finding(check="reflink", subject=str(pool), severity=Severity.FAIL,
                   message=f"no reflink: {why} (disks of {users})",
                   fix="put VM disks on XFS made with -m reflink=1, or btrfs; or snapshot with --allow-full-copy "
                       "(a full sparse copy after the thaw)")


@dataclass(frozen=True)
class DiskExtents:
    vm: str
    disk: str
    extents: int  # counted up to limit + 1


def extent_limit_finding(limit: int, barrier: str, disks: list[DiskExtents]) -> Finding:
    """The choice, said once: which disks reflink inside the freeze and which take the O(1) overlay barrier."""
    over = [d for d in disks if d.extents > limit]
    message = f"reflink_extent_limit = {limit}: {len(disks) - len(over)} file disk(s) reflink inside the freeze"
    if over:
        names = ", ".join(f"{d.vm}:{d.disk}" for d in over[:5]) + (" …" if len(over) > 5 else "")
        message += f", {len(over)} take the {barrier} overlay barrier ({names})"
    return Finding(check="extent-limit", subject="config", severity=Severity.INFO, message=message)


def rbd_finding(cluster: str, vms: list[str], error: str) -> Finding:
    users = ", ".join(sorted(vms))
    if not error:
        return Finding(check="rbd", subject=cluster, severity=Severity.OK,
                       message=f"reachable with the domains' credentials ({users})")
    return Finding(check="rbd", subject=cluster, severity=Severity.FAIL, message=f"{error} ({users})",
                   fix="check the monitors, the conf file and the client keyring the domain XML names "
                       "(ceph -s --id CLIENT -c CONF)")


@dataclass(frozen=True)
class TargetSpace:
    writable: bool
    error: str = ""
    free_bytes: int = 0
    total_bytes: int = 0


def backup_target_finding(name: str, where: str, space: TargetSpace | None) -> Finding:
    subject = f"{name} ({where})"
    if space is None:
        return Finding(check="backup-target", subject=subject, severity=Severity.INFO,
                       message="not probed (S3: run kvmkit backup list to reach it)")
    if not space.writable:
        return Finding(check="backup-target", subject=subject, severity=Severity.FAIL,
                       message=f"not writable: {space.error}", fix=f"create or mount {where} and make it writable "
                                                                    "by the user kvmkit runs as")
    free = space.free_bytes / (1 << 30)
    if space.free_bytes < MIN_FREE_BYTES or (space.total_bytes
                                             and space.free_bytes / space.total_bytes < MIN_FREE_FRACTION):
        return Finding(check="backup-target", subject=subject, severity=Severity.WARN,
                       message=f"writable, only {free:.1f} GiB free of {space.total_bytes / (1 << 30):.1f} GiB",
                       fix="kvmkit backup prune, or grow the target")
    return Finding(check="backup-target", subject=subject, severity=Severity.OK,
                   message=f"writable, {free:.1f} GiB free")


@dataclass(frozen=True)
class PathMode:
    exists: bool
    is_dir: bool = False
    mode: int = 0
    uid: int = 0


def state_dir_findings(state_dir: Path, folder: PathMode, catalog: Path, catalog_mode: PathMode,
                       euid: int) -> list[Finding]:
    found = []
    if not folder.exists:
        found.append(Finding(check="state-dir", subject=str(state_dir), severity=Severity.INFO,
                             message="does not exist yet (kvmkit makes it on first use)"))
    elif not folder.is_dir:
        found.append(Finding(check="state-dir", subject=str(state_dir), severity=Severity.FAIL,
                             message="is not a folder", fix=f"move it away; kvmkit keeps its catalog in {state_dir}"))
    elif folder.mode & 0o022 or folder.uid != euid:
        found.append(Finding(check="state-dir", subject=str(state_dir), severity=Severity.FAIL,
                             message=f"mode {folder.mode:04o}, owner uid {folder.uid}: others can change kvmkit's "
                                     "records", fix=f"chown {euid} {state_dir} && chmod 0700 {state_dir}"))
    else:
        found.append(Finding(check="state-dir", subject=str(state_dir), severity=Severity.OK,
                             message=f"mode {folder.mode:04o}, owned by uid {folder.uid}"))
    if catalog_mode.exists and catalog_mode.mode & 0o077:
        found.append(Finding(check="state-dir", subject=str(catalog), severity=Severity.WARN,
                             message=f"catalog mode {catalog_mode.mode:04o}", fix=f"chmod 0600 {catalog}"))
    return found


def clock_finding(now: datetime, newest_record: datetime | None) -> Finding:
    """A host clock behind kvmkit's own newest record (or before 2024) makes ages and retention wrong."""
    if now < EARLIEST_SANE:
        return Finding(check="clock", subject="host", severity=Severity.FAIL, message=f"the clock says {now:%Y-%m-%d}",
                       fix="set the time (chrony or systemd-timesyncd)")
    if newest_record is not None and newest_record - now > CLOCK_SLACK:
        return Finding(check="clock", subject="host", severity=Severity.FAIL,
                       message=f"the newest catalog record ({newest_record.isoformat(timespec='seconds')}) is "
                               f"{(newest_record - now).total_seconds():.0f} s in the future: the clock went back",
                       fix="sync the clock (chrony or systemd-timesyncd); retention and alerts use it")
    return Finding(check="clock", subject="host", severity=Severity.OK,
                   message=f"{now.isoformat(timespec='seconds')}, not behind kvmkit's records")
