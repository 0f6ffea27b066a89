"""`tune vm`'s pure core: parsing a definition, every rule per goal, fixes that make their own check pass,
orchestrator detection, the journal's strict reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmkit.errors import Conflict, InvalidInput, NotFound
from kvmkit.tune.model import Status
from kvmkit.tune.vm import journal
from kvmkit.tune.vm.domain import parse
from kvmkit.tune.vm.edits import XmlEdit, applied, before_after
from kvmkit.tune.vm.finding import GOALS
from kvmkit.tune.vm.host import HostFacts, parse_cpuset
from kvmkit.tune.vm.judge import fixed_xml, judge
from kvmkit.tune.vm.owners import owner

TWO_NODES = HostFacts(cpus=tuple(range(8)), numa_nodes={0: (0, 1, 2, 3), 1: (4, 5, 6, 7)},
                      hugepages_free_kib=8 << 20, vhost_net=True)
ONE_NODE_NO_VHOST = HostFacts(cpus=(0, 1), numa_nodes={0: (0, 1)}, hugepages_free_kib=0, vhost_net=False)


def domain(*, type_="kvm", vcpus=4, cpu="", disks="", nics="", extra="", devices_extra="", name="web1",
           metadata="") -> str:
    return (f"<domain type='{type_}'><name>{name}</name><uuid>0f7c5b7e-3c1e-4c43-9a52-6b9c1d2e3f40</uuid>"
            f"<memory unit='MiB'>1024</memory><vcpu>{vcpus}</vcpu>{cpu}{extra}"
            f"<metadata>{metadata}</metadata><devices>{disks}{nics}{devices_extra}</devices></domain>")


FILE_DISK = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/>"
             "<source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>")
SATA_DISK = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/x.raw'/>"
             "<target dev='sda' bus='sata'/></disk>")
RBD_DISK = ("<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            "<source protocol='rbd' name='vms/x_disk'><host name='10.0.0.1' port='6789'/></source>"
            "<target dev='vdb' bus='virtio'/></disk>")
NIC = ("<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/>"
       "<model type='virtio'/></interface>")
E1000 = ("<interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/>"
         "<model type='e1000'/></interface>")


def by_check(report) -> dict:
    return {f.check: f for f in report.findings}


# --- parsing -----------------------------------------------------------------------------------------------


def test_parse_reads_cpu_memory_disks_nics_and_clocks():
    xml = domain(cpu="<cpu mode='custom'><model>Skylake-Server</model><topology sockets='1' cores='4' "
                     "threads='1'/></cpu>",
                 extra="<cputune><vcpupin vcpu='0' cpuset='2'/><emulatorpin cpuset='0'/></cputune>"
                       "<memoryBacking><hugepages/><locked/></memoryBacking><iothreads>2</iothreads>"
                       "<clock offset='utc'><timer name='hpet' present='no'/></clock>",
                 disks=FILE_DISK + RBD_DISK, nics=NIC,
                 devices_extra="<memballoon model='virtio' autodeflate='on'><stats period='5'/></memballoon>")
    d = parse(xml)
    assert (d.cpu_mode, d.cpu_model, d.topology) == ("custom", "Skylake-Server", (1, 4, 1))
    assert d.vcpu_pins == {0: "2"} and d.emulator_pin == "0" and d.iothreads == 2
    assert d.hugepages and d.locked and not d.nosharepages and d.memory_kib == 1024 * 1024
    assert [x.target for x in d.disks] == ["vda", "vdb"] and d.disks[1].protocol == "rbd"
    assert d.nics[0].model == "virtio" and d.timers == {"hpet": False}
    assert d.balloon_stats_period == 5 and d.balloon_deflate_on_oom


@pytest.mark.parametrize("xml, message", [
    ("<domain", "does not parse"),
    ("<network/>", "not a domain"),
    (domain(vcpus="many"), "vcpu is not a number"),  # type: ignore[arg-type]
    (domain(disks="<disk><driver queues='-1'/></disk>"), "disk queues"),
    ("<domain><memory unit='parsec'>1</memory></domain>", "memory unit"),
])
def test_parse_refuses_bad_definitions_with_one_line(xml, message):
    with pytest.raises(InvalidInput, match=message):
        parse(xml)


def test_parse_refuses_oversized_xml():
    with pytest.raises(InvalidInput, match="larger than"):
        parse("<domain>" + " " * (5 << 20) + "</domain>")


@pytest.mark.parametrize("text, cpus", [("0-3,^2,6", {0, 1, 3, 6}), ("", set()), ("x", set()), ("3-1", set()),
                                        ("5", {5})])
def test_parse_cpuset(text, cpus):
    assert parse_cpuset(text) == cpus


# --- rules per goal ----------------------------------------------------------------------------------------


def test_generic_cpu_model_fails_for_latency_and_warns_for_per_watt():
    xml = domain(disks=FILE_DISK)
    assert by_check(judge(xml, TWO_NODES, "latency"))["cpu.model"].status == Status.FAIL
    assert by_check(judge(xml, TWO_NODES, "per-watt"))["cpu.model"].status == Status.WARN
    passthrough = domain(cpu="<cpu mode='host-passthrough'/>")
    assert by_check(judge(passthrough, TWO_NODES, "latency"))["cpu.model"].status == Status.PASS


def test_cpu_model_is_not_judged_under_tcg():
    assert by_check(judge(domain(type_="qemu"), TWO_NODES, "latency"))["cpu.model"].status == Status.NA


def test_topology_of_one_socket_per_vcpu_warns_and_the_fix_gives_one_socket():
    report = judge(domain(vcpus=4), TWO_NODES, "balanced")
    topo = by_check(report)["cpu.topology"]
    assert topo.status == Status.WARN and 'cores="4"' in topo.fix_after
    assert "cpu.topology" not in by_check(judge(domain(vcpus=1), TWO_NODES, "balanced"))


def test_pinning_is_judged_for_latency_only_and_plans_free_cpus_on_one_node():
    latency = by_check(judge(domain(vcpus=2), TWO_NODES, "latency"))["cpu.pinning"]
    assert latency.status == Status.FAIL
    assert 'cpuset="4"' in latency.fix_after and 'cpuset="5"' in latency.fix_after  # node 1 has most free CPUs
    assert "cpu.pinning" not in by_check(judge(domain(vcpus=2), TWO_NODES, "throughput"))


def test_pinning_avoids_cpus_other_vms_pin_to():
    host = HostFacts(cpus=tuple(range(8)), numa_nodes={0: tuple(range(8))}, hugepages_free_kib=0, vhost_net=True,
                     pinned_elsewhere=frozenset({1, 2, 3}))
    fix = by_check(judge(domain(vcpus=2), host, "latency"))["cpu.pinning"].fix_after
    assert 'cpuset="4"' in fix and 'cpuset="5"' in fix and 'vcpu="0" cpuset="1"' not in fix


def test_numa_is_na_on_one_node_and_fails_for_latency_on_two():
    assert by_check(judge(domain(), ONE_NODE_NO_VHOST, "latency"))["cpu.numa"].status == Status.NA
    numa = by_check(judge(domain(vcpus=2), TWO_NODES, "latency"))["cpu.numa"]
    assert numa.status == Status.FAIL and 'nodeset="1"' in numa.fix_after  # the node its planned pins are on


def test_hugepages_fix_is_manual_when_the_host_has_too_few_free():
    free = by_check(judge(domain(), TWO_NODES, "latency"))["memory.hugepages"]
    short = by_check(judge(domain(), ONE_NODE_NO_VHOST, "latency"))["memory.hugepages"]
    assert free.auto and not short.auto and "reserve them first" in short.why


def test_ksm_and_locked_are_latency_checks():
    latency = by_check(judge(domain(), TWO_NODES, "latency"))
    assert latency["memory.ksm"].status == Status.WARN and latency["memory.locked"].status == Status.WARN
    assert "memory.ksm" not in by_check(judge(domain(), TWO_NODES, "per-watt"))


def test_balloon_free_page_reporting_wanted_for_density_but_not_for_latency():
    on = domain(devices_extra="<memballoon model='virtio' freePageReporting='on'/>")
    assert by_check(judge(on, TWO_NODES, "latency"))["memory.balloon.free_page_reporting"].status == Status.WARN
    assert by_check(judge(on, TWO_NODES, "per-watt"))["memory.balloon.free_page_reporting"].status == Status.PASS
    none = domain(devices_extra="<memballoon model='none'/>")
    balloon = by_check(judge(none, TWO_NODES, "per-watt"))["memory.balloon"]
    assert balloon.status == Status.WARN and not balloon.auto


def test_disk_cache_io_iothread_for_a_writeback_file_disk():
    checks = by_check(judge(domain(disks=FILE_DISK), TWO_NODES, "throughput"))
    assert checks["disk.cache:vda"].status == Status.WARN
    assert checks["disk.io:vda"].status == Status.WARN
    assert checks["disk.iothread:vda"].status == Status.FAIL
    assert checks["disk.queues:vda"].status == Status.PASS  # absent queues: QEMU's default is one per vCPU


def test_rbd_disks_want_writeback_for_throughput_and_are_not_judged_on_io():
    checks = by_check(judge(domain(disks=RBD_DISK), TWO_NODES, "throughput"))
    assert checks["disk.cache:vdb"].status == Status.WARN and "librbd" in checks["disk.cache:vdb"].why
    assert "disk.io:vdb" not in checks


def test_explicit_low_disk_queues_warn_for_throughput():
    disk = FILE_DISK.replace("cache='writeback'", "cache='none' queues='1'")
    assert by_check(judge(domain(disks=disk), TWO_NODES, "throughput"))["disk.queues:vda"].status == Status.WARN


def test_sata_disk_fails_and_its_fix_is_left_to_a_person():
    bus = by_check(judge(domain(disks=SATA_DISK), TWO_NODES, "balanced"))["disk.bus:sda"]
    assert bus.status == Status.FAIL and not bus.auto and "hw_disk_bus=virtio" in bus.knobs["nova"]


def test_discard_is_a_density_check():
    assert by_check(judge(domain(disks=FILE_DISK), TWO_NODES, "per-watt"))["disk.discard:vda"].status == Status.WARN
    assert "disk.discard:vda" not in by_check(judge(domain(disks=FILE_DISK), TWO_NODES, "latency"))


def test_nic_multiqueue_and_rings_for_throughput():
    checks = by_check(judge(domain(nics=NIC), TWO_NODES, "throughput"))
    mq = checks["nic.multiqueue:52:54:00:00:00:01"]
    assert mq.status == Status.FAIL and 'queues="4"' in mq.fix_after
    assert mq.knobs["nova"].startswith("flavor extra spec hw:vif_multiqueue_enabled=true")
    assert checks["nic.rings:52:54:00:00:00:01"].status == Status.WARN


def test_nic_backend_is_named_when_vhost_net_is_missing():
    backend = by_check(judge(domain(nics=NIC), ONE_NODE_NO_VHOST, "throughput"))["nic.backend:52:54:00:00:00:01"]
    assert backend.status == Status.NA and "userspace" in backend.current
    forced = NIC.replace("<model type='virtio'/>", "<model type='virtio'/><driver name='qemu'/>")
    assert by_check(judge(domain(nics=forced), TWO_NODES, "throughput"))[
        "nic.backend:52:54:00:00:00:01"].status == Status.FAIL


def test_emulated_nic_fails_every_goal():
    for goal in GOALS:
        assert by_check(judge(domain(nics=E1000), TWO_NODES, goal))["nic.model:52:54:00:00:00:02"].status \
            == Status.FAIL


def test_hyperv_enlightenments_only_for_windows_guests():
    win = ("<libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>"
           "<libosinfo:os id='http://microsoft.com/win/2k22'/></libosinfo:libosinfo>")
    hv = by_check(judge(domain(metadata=win), TWO_NODES, "balanced"))["clock.hyperv"]
    assert hv.status == Status.FAIL and "<relaxed" in hv.fix_after and "os_type=windows" in hv.knobs["nova"]
    assert "clock.hyperv" not in by_check(judge(domain(), TWO_NODES, "balanced"))
    passthrough = domain(metadata=win, extra="<features><hyperv mode='passthrough'/></features>")
    assert by_check(judge(passthrough, TWO_NODES, "balanced"))["clock.hyperv"].status == Status.PASS


def test_kvmclock_off_fails_and_hpet_warns_for_latency():
    xml = domain(extra="<clock offset='utc'><timer name='kvmclock' present='no'/></clock>")
    checks = by_check(judge(xml, TWO_NODES, "latency"))
    assert checks["clock.kvmclock"].status == Status.FAIL and checks["clock.hpet"].status == Status.WARN


@pytest.mark.parametrize("goal", GOALS)
def test_every_automatic_fix_makes_its_own_check_pass(goal):
    xml = domain(disks=FILE_DISK + RBD_DISK, nics=NIC, devices_extra="<memballoon model='virtio'/>",
                 extra="<clock offset='utc'><timer name='kvmclock' present='no'/></clock>")
    new_xml, chosen = fixed_xml(xml, TWO_NODES, goal)
    assert chosen, goal
    after = by_check(judge(new_xml, TWO_NODES, goal))
    for f in chosen:
        assert after[f.check].status == Status.PASS, (goal, f.check, after[f.check].current)


def test_only_limits_the_fixes():
    xml = domain(disks=FILE_DISK)
    new_xml, chosen = fixed_xml(xml, TWO_NODES, "throughput", {"disk.iothread:vda"})
    assert [f.check for f in chosen] == ["disk.iothread:vda"]
    assert "cache='writeback'" in xml and 'cache="writeback"' in new_xml


def test_unknown_goal_is_bad_input():
    with pytest.raises(InvalidInput, match="unknown goal"):
        judge(domain(), TWO_NODES, "speed")


# --- edits ---------------------------------------------------------------------------------------------------


def test_edit_creates_missing_keyed_steps_and_shows_before_and_after():
    xml = domain(vcpus=1)
    edit = XmlEdit(("cputune", "vcpupin[@vcpu='0']"), {"cpuset": "3"})
    assert "<vcpupin vcpu=\"0\" cpuset=\"3\" />" in applied(xml, [edit])
    before, after = before_after(xml, [edit])
    assert before == "(absent)" and "<cputune>" in after


def test_edit_refuses_a_missing_positional_element():
    with pytest.raises(InvalidInput, match="no element"):
        applied(domain(), [XmlEdit(("devices", "disk[3]", "driver"), {"cache": "none"})])


# --- owners --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, metadata, expected", [
    ("web1", "", None),
    ("instance-0000002a", "", "nova"),
    ("web1", "<nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'/>", "nova"),
    ("i-2-34-VM", "", "cloudstack"),
    ("r-15-VM", "", "cloudstack"),
    ("web1", "<cs:vm xmlns:cs='http://cloudstack.apache.org/ns/vm'/>", "cloudstack"),
    ("i-am-a-vm", "", None),
])
def test_owner_from_name_and_metadata(name, metadata, expected):
    assert owner(parse(domain(name=name, metadata=metadata))) == expected
    assert judge(domain(name=name, metadata=metadata), TWO_NODES, "balanced").owner == expected


# --- journal -------------------------------------------------------------------------------------------------


def _record(**kw) -> journal.VmJournal:
    base = dict(created="2026-12-07T00:00:00+00:00", vm="web1", uuid="0f7c5b7e-3c1e-4c43-9a52-6b9c1d2e3f40",
                goal="latency", checks=["cpu.pmu"], original_xml=domain())
    return journal.VmJournal(**{**base, **kw})


def test_journal_is_written_0600_exclusively_and_read_back(tmp_path: Path):
    path = tmp_path / "j" / "x.json"
    journal.save(_record(), path, exclusive=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert journal.load(path).original_xml == domain()
    with pytest.raises(Conflict, match="not rolled back"):
        journal.save(_record(), path, exclusive=True)


def test_journal_refuses_tampered_or_odd_files(tmp_path: Path):
    with pytest.raises(NotFound):
        journal.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(_record().model_dump_json()), "vm": "../etc"}))
    bad.chmod(0o600)
    with pytest.raises(InvalidInput, match="not a kvmkit tune vm journal"):
        journal.load(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**json.loads(_record().model_dump_json()), "run": "rm -rf /"}))
    extra.chmod(0o600)
    with pytest.raises(InvalidInput):
        journal.load(extra)
    loose = tmp_path / "loose.json"
    loose.write_text(_record().model_dump_json())
    loose.chmod(0o644)
    with pytest.raises(InvalidInput, match="by others"):
        journal.load(loose)
    link = tmp_path / "link.json"
    link.symlink_to(loose)
    with pytest.raises(InvalidInput):
        journal.load(link)


# --- measure's arithmetic --------------------------------------------------------------------------------------


def test_verdict_says_worse_when_the_fix_measures_worse():
    from kvmkit.tune.vm.measure import geomean, verdict

    assert verdict(0.80) == "worse" and verdict(1.20) == "better" and verdict(1.01) == "no change"
    assert geomean([2.0, 0.5]) == pytest.approx(1.0) and geomean([]) == 0.0


def test_pinned_vcpus_with_an_unpinned_iothread_still_need_pinning():
    xml = domain(vcpus=1, extra="<iothreads>1</iothreads><cputune><vcpupin vcpu='0' cpuset='5'/>"
                                "<emulatorpin cpuset='0'/></cputune>")
    pinning = by_check(judge(xml, TWO_NODES, "latency"))["cpu.pinning"]
    assert pinning.status == Status.FAIL and "1 of 1 iothreads unpinned" in pinning.current
    assert "<iothreadpin iothread=\"1\"" in pinning.fix_after
    fixed, _ = fixed_xml(xml, TWO_NODES, "latency", {"cpu.pinning"})
    assert by_check(judge(fixed, TWO_NODES, "latency"))["cpu.pinning"].status == Status.PASS
