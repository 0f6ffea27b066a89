"""Verdicts and scores, per goal, on the shipped captures (pure evaluation)."""

from __future__ import annotations

import pytest

from kvmkit.tune.evaluate import audit, evaluate, score
from kvmkit.tune.model import Finding, Reading, Severity, Status
from kvmkit.tune.profiles import load_all, load_profile


def statuses(profile_name: str, readings: dict[str, Reading]) -> dict[str, Status]:
    return {f.check: f.status for f in evaluate(load_profile(profile_name), list(readings.values()))}


def test_latency_verdicts_on_synthetic_xeon(xeon_readings):
    got = statuses("latency", xeon_readings)
    assert got["cpufreq_governor"] == Status.FAIL  # powersave
    assert got["cstate_exit_latency_us"] == Status.FAIL  # C6 at 170 µs enabled
    assert got["ksm_run"] == Status.FAIL
    assert got["nohz_full"] == Status.FAIL
    assert got["cpu_vulnerabilities"] == Status.FAIL  # gather_data_sampling: Vulnerable
    assert got["numa_balancing"] == Status.WARN  # two nodes, balancing on
    assert got["smt"] == Status.WARN
    assert got["thp_defrag"] == Status.PASS
    assert got["vhost_net"] == Status.PASS


def test_per_watt_is_happy_where_latency_is_not(xeon_readings):
    got = statuses("per-watt", xeon_readings)
    assert got["cpufreq_governor"] == Status.PASS
    assert got["cstates_disabled"] == Status.PASS
    assert got["ksm_run"] == Status.PASS
    assert got["halt_poll_ns"] == Status.WARN  # 200 µs of polling burns power
    assert got["turbo"] == Status.WARN


def test_io_scheduler_names_only_the_offending_disk(xeon_readings):
    finding = next(
        f for f in evaluate(load_profile("throughput"), list(xeon_readings.values())) if f.check == "io_scheduler"
    )
    assert finding.status == Status.WARN
    assert finding.bad_instances == ["nvme1n1"]
    assert finding.fixes[0].kind == "runtime"
    assert finding.fixes[0].text == "echo none > /sys/block/nvme1n1/queue/scheduler"


def test_numa_rule_is_not_applicable_on_one_node(dev_vm_readings):
    finding = next(
        f for f in evaluate(load_profile("latency"), list(dev_vm_readings.values())) if f.check == "numa_balancing"
    )
    assert finding.status == Status.NA
    assert "numa_nodes" in finding.detail


def test_unreadable_check_is_unknown_with_reason_and_no_fix(dev_vm_readings):
    finding = next(
        f for f in evaluate(load_profile("latency"), list(dev_vm_readings.values())) if f.check == "cpufreq_governor"
    )
    assert finding.status == Status.UNKNOWN
    assert "no cpufreq driver" in finding.detail
    assert finding.fixes == []


def test_fail_carries_runtime_persistent_and_bios_fixes(xeon_readings):
    finding = next(
        f
        for f in evaluate(load_profile("latency"), list(xeon_readings.values()))
        if f.check == "cstate_exit_latency_us"
    )
    kinds = [r.kind for r in finding.fixes]
    assert kinds == ["runtime", "persistent", "bios"]
    assert "C1" in finding.fixes[-1].text


def _finding(status: Status, severity: Severity) -> Finding:
    return Finding(check="x", title="x", status=status, severity=severity, current="", expected="", why="", source="")


def test_score_weights_severity_and_ignores_unknown():
    findings = [
        _finding(Status.PASS, Severity.HIGH),
        _finding(Status.FAIL, Severity.LOW),
        _finding(Status.WARN, Severity.MEDIUM),
        _finding(Status.UNKNOWN, Severity.HIGH),
        _finding(Status.NA, Severity.HIGH),
    ]
    assert score(findings) == round(100 * (3 + 0 + 1) / (3 + 1 + 2))


def test_score_of_nothing_judged_is_zero():
    assert score([_finding(Status.UNKNOWN, Severity.HIGH)]) == 0


@pytest.mark.parametrize("goal", ["balanced", "latency", "per-core", "per-watt", "throughput"])
def test_report_has_a_score_for_every_goal(goal, xeon_readings):
    profiles = load_all()
    profile = next(p for p in profiles if p.name == goal)
    report = audit(profile, list(xeon_readings.values()), profiles, "h", "test")
    assert set(report.scores) == {p.name for p in profiles}
    assert 0 <= report.score <= 100
    assert sum(report.counts.values()) == len(profile.rules)
    assert report.failed == (report.counts["FAIL"] > 0)


def test_goals_rank_the_synthetic_xeon_as_configured(xeon_readings):
    """Stock settings with powersave and deep C-states suit per-watt far better than latency."""
    profiles = load_all()
    report = audit(profiles[0], list(xeon_readings.values()), profiles, "h", "test")
    assert report.scores["per-watt"] > report.scores["throughput"] > report.scores["latency"]


def test_runtime_text_collapses_per_cpu_writes():
    from kvmkit.tune.fixes import Write, runtime_text

    writes = [Write(f"/sys/devices/system/cpu/cpufreq/policy{n}/scaling_governor", "performance") for n in (0, 1, 2, 5)]
    assert (
        runtime_text(writes)
        == "echo performance > /sys/devices/system/cpu/cpufreq/policyN/scaling_governor (N = 0-2,5)"
    )
    assert runtime_text([Write("/proc/sys/vm/swappiness", "10")]) == "sysctl -w vm.swappiness=10"
    assert runtime_text([Write("/sys/block/nvme1n1/queue/scheduler", "none")]) == (
        "echo none > /sys/block/nvme1n1/queue/scheduler"
    )


def test_paths_collapse_only_when_one_number_varies():
    from kvmkit.tune.fixes import numbered_pattern

    states = [f"/sys/devices/system/cpu/cpu{n}/cpuidle/state3/disable" for n in range(8)]
    assert numbered_pattern(states) == "/sys/devices/system/cpu/cpuN/cpuidle/state3/disable (N = 0-7)"
    mixed = [
        "/sys/devices/system/cpu/cpu0/cpuidle/state2/disable",
        "/sys/devices/system/cpu/cpu1/cpuidle/state3/disable",
    ]
    assert numbered_pattern(mixed) is None
    assert numbered_pattern(states[:1]) is None


def test_hugepage_fix_names_the_page_counts(xeon_readings):
    """16 GiB reserved (1 GiB pages) for 24 GiB of domains: 8 GiB more = 4096 × 2 MiB now, or 24 × 1 GiB at boot."""
    finding = next(
        f
        for f in evaluate(load_profile("latency"), list(xeon_readings.values()))
        if f.check == "hugepages_coverage_pct"
    )
    texts = {r.kind: r.text for r in finding.fixes}
    assert texts["manual"].startswith("sysctl -w vm.nr_hugepages=4096 (+4096 × 2 MiB = 8192 MiB more")
    assert "hugepagesz=1G hugepages=24," in texts["persistent"]
