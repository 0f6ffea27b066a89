"""The libvirt edge of `tune vm`: definitions and host facts in, a redefinition out — through kvmkit.virt only.

apply: judge the persistent definition → journal the original (0600, exclusive) → define the fixed one → read it
back into the journal → on a running VM, take the new pins live (live.py). rollback: the current definition must
still be what apply left (else someone changed it since, and putting the old one back would lose that) → define the
original → put the live pins back → delete the journal."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from kvmkit.errors import Conflict, OperationFailed
from kvmkit.tune.vm import journal, live
from kvmkit.tune.vm.host import HostFacts, parse_cpuset
from kvmkit.tune.vm.judge import VmReport, fixed_xml, judge
from kvmkit.tune.vm.measured import Contention
from kvmkit.virt.connection import (
    Connection,
    Domain,
    define,
    domains,
    is_active,
    lookup,
    persistent_xml,
)

log = logging.getLogger(__name__)
SYS_NODES = Path("/sys/devices/system/node")


def _read(path: Path, limit: int = 65536) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode(errors="replace")


def _hugepages_free_kib(meminfo: str) -> int:
    fields = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        fields[name.strip()] = rest.split()[0] if rest.split() else "0"
    return int(fields.get("HugePages_Free", "0")) * int(fields.get("Hugepagesize", "0"))


def host_facts(conn: Connection, skip_uuid: str = "", contention: dict[str, Contention] | None = None) -> HostFacts:
    """This host's CPUs and NUMA nodes (from sysfs), free huge pages, vhost-net, CPUs other VMs pin to, and what a
    congestion history measured (given by the caller)."""
    cpus = tuple(sorted(parse_cpuset(_read(Path("/sys/devices/system/cpu/online")).strip())))
    nodes: dict[int, tuple[int, ...]] = {}
    if SYS_NODES.is_dir():
        for entry in sorted(SYS_NODES.glob("node[0-9]*"))[:1024]:
            nodes[int(entry.name[4:])] = tuple(sorted(parse_cpuset(_read(entry / "cpulist").strip())))
    pinned: set[int] = set()
    for dom, vm_uuid, _name in domains(conn):
        if vm_uuid == skip_uuid:
            continue
        xml = _xml_or_none(dom) or ""
        if "<vcpupin" in xml:
            for pin in ET.fromstring(xml).findall("cputune/vcpupin"):
                pinned |= parse_cpuset(pin.get("cpuset", ""))
    return HostFacts(cpus=cpus, numa_nodes=nodes or {0: cpus},
                     hugepages_free_kib=_hugepages_free_kib(_read(Path("/proc/meminfo"))),
                     vhost_net=os.path.exists("/dev/vhost-net"), pinned_elsewhere=frozenset(pinned),
                     contention=contention or {})


def _xml_or_none(dom: Domain) -> str | None:
    """A neighbour's persistent XML, or None when it is transient or vanished while we looked (VMs come and go;
    the pins of the others are context for the plan, not a reason to fail)."""
    try:
        return persistent_xml(dom)
    except Exception:  # libvirt.libvirtError; libvirt itself stays behind kvmkit.virt
        return None


def _definition(dom: Domain) -> str:
    try:
        xml = persistent_xml(dom)
    except Exception as exc:  # libvirt.libvirtError: the domain went away, or libvirt failed
        raise OperationFailed(f"VM {dom.name()}: cannot read its definition: {exc}") from exc
    if xml is None:
        raise Conflict(f"VM {dom.name()} is transient: it has no persistent definition to judge or change")
    return xml


def chosen_domains(conn: Connection, names: list[str], every: bool) -> list[Domain]:
    if every:  # persistent ones only, and only those still there
        return [dom for dom, _u, _n in sorted(domains(conn), key=lambda t: t[2]) if _xml_or_none(dom)]
    return [lookup(conn, name) for name in names]


def report_for(conn: Connection, dom: Domain, goal: str, contention: dict[str, Contention] | None = None
               ) -> VmReport:
    return judge(_definition(dom), host_facts(conn, dom.UUIDString(), contention), goal, running=is_active(dom))


@dataclass
class ApplyOutcome:
    vm: str
    goal: str
    owner: str | None
    dry_run: bool
    journal: str | None
    fixed: list[str] = field(default_factory=list)
    before_after: list[tuple[str, str, str]] = field(default_factory=list)  # (check, before XML, after XML)
    restart_needed: bool = False
    live: list[str] = field(default_factory=list)  # pins taken (or, in a dry run, to be taken) on the running VM
    not_live: list[str] = field(default_factory=list)  # pins libvirt refused live, and why (next start takes them)


def plan(conn: Connection, dom: Domain, goal: str, only: set[str] | None,
         contention: dict[str, Contention] | None = None) -> tuple[VmReport, str, str, list]:
    xml = _definition(dom)
    host = host_facts(conn, dom.UUIDString(), contention)
    report = judge(xml, host, goal, running=is_active(dom))
    new_xml, chosen = fixed_xml(xml, host, goal, only)
    return report, xml, new_xml, chosen


def apply(conn: Connection, dom: Domain, goal: str, journal_dir: Path, *, only: set[str] | None = None,
          dry_run: bool = False, contention: dict[str, Contention] | None = None) -> ApplyOutcome:
    report, xml, new_xml, chosen = plan(conn, dom, goal, only, contention)
    outcome = ApplyOutcome(vm=report.vm, goal=goal, owner=report.owner, dry_run=dry_run, journal=None,
                           fixed=[f.check for f in chosen],
                           before_after=[(f.check, f.fix_before, f.fix_after) for f in chosen],
                           restart_needed=report.running and any(not live.pins_only(f.edits) for f in chosen))
    # only the pins this fix changes in the definition: a pin someone set live by hand is not apply's to undo
    pins = live.plan(live.pins_of(xml), live.pins_of(new_xml)) if report.running and chosen else []
    if report.owner is not None:
        raise Conflict(f"VM {report.vm} is managed by {report.owner}, which rewrites its definition at every "
                       f"start: kvmkit does not redefine it; set the {report.owner} knobs `kvmkit tune vm "
                       f"{report.vm} --goal {goal}` shows")
    if dry_run or not chosen:
        outcome.live = [str(p) for p in pins]
        return outcome
    path = journal.path_for(journal_dir, report.uuid)
    record = journal.VmJournal(created=datetime.now(UTC).isoformat(), vm=report.vm, uuid=report.uuid, goal=goal,
                               checks=outcome.fixed, original_xml=xml)
    journal.save(record, path, exclusive=True)
    try:
        define(dom, new_xml)
    except OperationFailed:
        path.unlink(missing_ok=True)
        raise
    record.applied_xml = _definition(dom)
    journal.save(record, path, exclusive=False)
    if pins:
        taken, outcome.not_live = live.take_live(dom, pins)
        outcome.live = [str(p) for p in taken]
        outcome.restart_needed = outcome.restart_needed or bool(outcome.not_live)
    log.info("tune vm apply", extra={"vm": report.vm, "goal": goal, "checks": outcome.fixed})
    outcome.journal = str(path)
    return outcome


def rollback(conn: Connection, name: str, journal_dir: Path, force: bool = False) -> journal.VmJournal:
    dom = lookup(conn, name)
    path = journal.path_for(journal_dir, dom.UUIDString())
    record = journal.load(path)
    if record.uuid.lower() != dom.UUIDString().lower():
        raise Conflict(f"journal {path} is for VM {record.vm} ({record.uuid}), not {name}: refused")
    if not force and _definition(dom) != record.applied_xml:
        raise Conflict(f"VM {name}'s definition changed after `tune vm apply`: rolling back would lose that; "
                       "pass --force to put the original back anyway")
    define(dom, record.original_xml)
    if is_active(dom):  # the pins apply took live go back too (a failure here leaves them until the next start)
        pins = live.plan(live.pins_of(record.applied_xml or record.original_xml), live.pins_of(record.original_xml))
        _taken, missed = live.take_live(dom, pins)
        for why in missed:
            log.warning("tune vm rollback: a live pin stays until the next start", extra={"vm": name, "pin": why})
    path.unlink()
    return record


def pending_journal(conn: Connection, name: str, journal_dir: Path) -> journal.VmJournal:
    """The journal an earlier apply left for this VM (NotFound when there is none)."""
    dom = lookup(conn, name)
    return journal.load(journal.path_for(journal_dir, dom.UUIDString()))
