"""The pure rules of `kvmkit doctor`: observations in, severities and fixes out."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from kvmkit.doctor import checks
from kvmkit.doctor.checks import DiskExtents, PathMode, TargetSpace
from kvmkit.doctor.model import Finding, Report, Severity
from kvmkit.virt.inventory import AgentInfo, LibvirtInfo

CHANNEL_XML = """<domain><devices>
  <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='{state}'/></channel>
  <channel type='pty'><target type='virtio' name='other'/></channel>
</devices></domain>"""


def test_channel_state_is_read_from_the_live_xml_and_none_without_a_channel():
    assert checks.agent_channel_state(CHANNEL_XML.format(state="connected")) == "connected"
    assert checks.agent_channel_state(CHANNEL_XML.format(state="disconnected")) == "disconnected"
    assert checks.agent_channel_state("<domain><devices/></domain>") is None


def test_a_vm_without_a_channel_fails_with_the_channel_xml_as_the_fix():
    [finding] = checks.agent_findings("vm1", None, AgentInfo(answered=False, error="no channel"))
    assert finding.severity is Severity.FAIL and "org.qemu.guest_agent.0" in finding.fix


def test_a_silent_agent_fails_and_says_the_channel_state():
    [finding] = checks.agent_findings("vm1", "disconnected", AgentInfo(answered=False, error="not connected"))
    assert finding.severity is Severity.FAIL
    assert finding.message == "channel disconnected, agent not answering: not connected"
    assert "qemu-guest-agent" in finding.fix


def test_an_agent_that_blocks_fsfreeze_fails_the_fsfreeze_line_only():
    agent = AgentInfo(answered=True, version="7.2", enabled_commands=frozenset({"guest-ping", "guest-info"}))
    found = checks.agent_findings("vm1", "connected", agent)
    assert [(f.check, f.severity) for f in found] == [("agent", Severity.OK), ("fsfreeze", Severity.FAIL)]
    agent = AgentInfo(answered=True, version="7.2", enabled_commands=frozenset({"guest-fsfreeze-freeze"}))
    assert [f.severity for f in checks.agent_findings("vm1", "connected", agent)] == [Severity.OK, Severity.OK]


def test_libvirt_line_carries_versions_or_fails_with_how_to_start_it():
    ok = checks.libvirt_finding("qemu:///system", LibvirtInfo("qemu:///system", "9.0.0", "7.2.0"), "")
    assert ok.severity is Severity.OK and ok.message == "libvirt 9.0.0, hypervisor 7.2.0"
    bad = checks.libvirt_finding("qemu:///sytem", None, "cannot connect")
    assert bad.severity is Severity.FAIL and "--connect" in bad.fix


def test_extent_limit_names_the_disks_that_take_the_overlay_barrier():
    disks = [DiskExtents("a", "vda", 3), DiskExtents("b", "vdb", 2049)]
    finding = checks.extent_limit_finding(2048, "qmp", disks)
    assert finding.severity is Severity.INFO
    assert finding.message == ("reflink_extent_limit = 2048: 1 file disk(s) reflink inside the freeze, 1 take the "
                               "qmp overlay barrier (b:vdb)")


def test_reflink_failure_offers_xfs_or_full_copy():
    finding = checks.reflink_finding(Path("/pool"), ["b", "a"], False)
    assert finding.severity is Severity.FAIL and "(disks of a, b)" in finding.message
    assert "--allow-full-copy" in finding.fix


def test_backup_target_space_thresholds():
    gib = 1 << 30
    assert checks.backup_target_finding("t", "/b", TargetSpace(True, free_bytes=50 * gib,
                                                               total_bytes=100 * gib)).severity is Severity.OK
    low = checks.backup_target_finding("t", "/b", TargetSpace(True, free_bytes=5 * gib, total_bytes=100 * gib))
    assert low.severity is Severity.WARN and "prune" in low.fix
    tiny = checks.backup_target_finding("t", "/b", TargetSpace(True, free_bytes=gib // 2, total_bytes=gib))
    assert tiny.severity is Severity.WARN
    assert checks.backup_target_finding("t", "/b", TargetSpace(False, "Permission denied")).severity is Severity.FAIL
    assert checks.backup_target_finding("s3", "http://x", None).severity is Severity.INFO


def test_state_dir_writable_by_others_fails_and_a_loose_catalog_warns():
    missing = PathMode(exists=False)
    found = checks.state_dir_findings(Path("/s"), PathMode(True, True, 0o777, 0), Path("/s/c"), missing, 0)
    assert [f.severity for f in found] == [Severity.FAIL]
    assert found[0].fix == "chown 0 /s && chmod 0700 /s"
    found = checks.state_dir_findings(Path("/s"), PathMode(True, True, 0o700, 0), Path("/s/c"),
                                      PathMode(True, False, 0o644, 0), 0)
    assert [f.severity for f in found] == [Severity.OK, Severity.WARN]
    foreign = checks.state_dir_findings(Path("/s"), PathMode(True, True, 0o700, 1000), Path("/s/c"), missing, 0)
    assert foreign[0].severity is Severity.FAIL


def test_clock_behind_the_newest_record_fails():
    now = datetime(2026, 12, 3, 10, 0).astimezone()
    assert checks.clock_finding(now, now - timedelta(hours=1)).severity is Severity.OK
    assert checks.clock_finding(now, None).severity is Severity.OK
    behind = checks.clock_finding(now, now + timedelta(hours=1))
    assert behind.severity is Severity.FAIL and "3600 s in the future" in behind.message
    assert checks.clock_finding(datetime(2001, 1, 1).astimezone(), None).severity is Severity.FAIL


def test_exit_code_is_one_only_for_a_failed_check():
    def report(*severities: Severity) -> Report:
        return Report(findings=[Finding(check="x", subject="y", severity=s, message="m") for s in severities],
                      seconds=0)

    assert report(Severity.OK, Severity.WARN, Severity.INFO).exit_code == 0
    assert report(Severity.OK, Severity.FAIL).exit_code == 1
