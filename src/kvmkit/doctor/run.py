"""`doctor.run`: gather every observation (slow ones — agents, Ceph, pool probes — concurrently) into one Report.

The order of findings is fixed (libvirt, agents, storage, backup, host) so two runs diff cleanly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from kvmkit.config import Settings
from kvmkit.doctor import checks, probes
from kvmkit.doctor.model import Finding, Report, Severity
from kvmkit.errors import KvmkitError
from kvmkit.virt.disks import Disk, parse_disks

WORKERS = 8


def run(settings: Settings, uri: str) -> Report:
    t0 = time.perf_counter()
    findings: list[Finding] = []
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="doctor") as pool:
        host: list[Future] = [pool.submit(probes.state_dir, settings)]
        targets = [pool.submit(probes.backup_target, t) for t in settings.backup_targets]
        findings += (bindings := checks.binding_findings())
        if not any(f.subject == "libvirt" and f.severity is Severity.FAIL for f in bindings):
            findings += _hypervisor(settings, uri, pool)
        findings += [f.result() for f in targets]
        findings += host[0].result()
    findings.append(checks.clock_finding(datetime.now().astimezone(), _newest_record(settings.catalog_path)))
    return Report(findings=findings, seconds=round(time.perf_counter() - t0, 3))


def _newest_record(catalog: Path) -> datetime | None:
    from kvmkit.health.records import newest_created

    try:
        return newest_created(catalog)
    except OSError:
        return None


def _hypervisor(settings: Settings, uri: str, pool: ThreadPoolExecutor) -> list[Finding]:
    from kvmkit.virt import inventory
    from kvmkit.virt.connection import open_connection

    try:
        conn = open_connection(uri)
    except KvmkitError as exc:
        return [checks.libvirt_finding(uri, None, str(exc))]
    try:
        found = [checks.libvirt_finding(uri, inventory.libvirt_info(conn), "")]
        domains = sorted(inventory.running_domains(conn), key=lambda d: d[0].name)
        agents = []
        for info, dom in domains:
            channel = checks.agent_channel_state(info.xml)
            answer = pool.submit(inventory.agent_info, dom) if channel is not None else None
            agents.append((info.name, channel, answer))
        disks = [(info.name, disk) for info, _ in domains for disk in parse_disks(info.xml)]
        storage = _storage(settings, disks, pool)
        for name, channel, answer in agents:
            agent = answer.result() if answer else inventory.AgentInfo(answered=False, error="no channel")
            found += checks.agent_findings(name, channel, agent)
        return found + storage
    finally:
        conn.close()


def _storage(settings: Settings, disks: list[tuple[str, Disk]], pool: ThreadPoolExecutor) -> list[Finding]:
    files = [(vm, d) for vm, d in disks if d.kind == "file"]
    folders: dict[Path, set[str]] = defaultdict(set)
    for vm, disk in files:
        folders[Path(disk.source).parent].add(vm)
    clusters: dict[tuple, list[tuple[str, Disk]]] = defaultdict(list)
    for vm, disk in disks:
        if disk.kind == "network" and disk.protocol == "rbd":
            clusters[(disk.config_file, disk.hosts, disk.auth_username)].append((vm, disk))
    probes.preload(rbd=bool(clusters))
    reflinks = [pool.submit(probes.reflink, folder, sorted(vms)) for folder, vms in sorted(folders.items())]
    rbds = [pool.submit(probes.rbd_cluster, settings, members) for _, members in sorted(clusters.items(), key=str)]
    extents = probes.extents(files, settings.reflink_extent_limit)
    found = [f.result() for f in reflinks]
    if files:
        found.append(checks.extent_limit_finding(settings.reflink_extent_limit, settings.overlay_barrier, extents))
    return found + [f.result() for f in rbds]
