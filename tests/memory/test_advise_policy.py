"""Memory advise and policy, pure: hand-made reports in, ratios and actions out."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.errors import InvalidInput
from kvmkit.memory import advise, policy
from kvmkit.memory.model import HostMemory, MemoryReport, VmDetail, VmMemory

GIB = 1 << 30
MIB = 1 << 20


def _vm(domain: str, psi: float | None, rss: int = GIB, configured: int = 2 * GIB, balloon: int | None = 2 * GIB,
        guest_total: int | None = 2 * GIB, guest_available: int | None = GIB) -> VmMemory:
    return VmMemory(domain=domain, pid=1, configured_bytes=configured, balloon_bytes=balloon, rss_bytes=rss,
                    overhead_bytes=0, major_faults_per_s=0, swap_in_bytes_per_s=None, psi_some_pct=psi,
                    psi_full_pct=0, oom_events=0, guest_available_bytes=guest_available,
                    detail=VmDetail(guest_total_bytes=guest_total))  # fmt: skip


def _report(t: float, ratio: float, available: int, vms: list[VmMemory], ram: int = 100 * GIB) -> MemoryReport:
    host = HostMemory(ram_bytes=ram, vm_configured_bytes=int(ratio * ram), oversubscription=ratio,
                      available_bytes=available, swap_in_bytes_per_s=None, psi_some_avg10=0, psi_full_avg10=0,
                      ksm_saved_bytes=0, ksm_cpu_pct=0)  # fmt: skip
    return MemoryReport(time=t, interval_s=1, host=host, vms=vms)


def test_fit_ratio_is_where_resident_demand_would_fill_available_memory():
    # ratio 1.0, VMs resident 40 GiB, 55 GiB available, reserve 5 % of 100 GiB: room 90 GiB → 2.25x
    reports = [_report(t, 1.0, 55 * GIB, [_vm(f"vm{i}", 0.1, rss=10 * GIB) for i in range(4)]) for t in range(20)]
    result = advise.advise(reports, slo_pressure_pct=1.0)
    assert result.fit_ratio == 2.25 and result.ram_ratio == 2.25
    assert result.observed_ok_ratio == 1.0 and result.intervals == 20


def test_the_tight_moments_decide_the_fit():
    calm = [_report(t, 1.0, 55 * GIB, [_vm("a", 0.0, rss=40 * GIB)]) for t in range(90)]
    tight = [_report(100 + t, 1.0, 15 * GIB, [_vm("a", 0.5, rss=40 * GIB)]) for t in range(10)]
    # tight: room = 40 + 15 − 5 = 50 GiB → 1.25x; the 5th percentile of fits is a tight one
    assert advise.advise(calm + tight, slo_pressure_pct=1.0).ram_ratio == 1.25


def test_when_the_recorded_ratio_broke_the_slo_the_highest_ratio_that_kept_it_is_advised():
    ok = [_report(t, 1.2, 20 * GIB, [_vm("a", 0.2)]) for t in range(50)]
    bad = [_report(100 + t, 1.5, 2 * GIB, [_vm("a", 30.0)]) for t in range(50)]
    result = advise.advise(ok + bad, slo_pressure_pct=5.0)
    assert result.observed_ok_ratio == 1.2 and result.ram_ratio == 1.2
    assert [b.ram_ratio for b in result.bins] == [1.2, 1.5] and result.bins[1].pressure_pct == 30.0


def test_no_ratio_kept_the_slo_gives_none_and_bad_input_is_one_line():
    bad = [_report(t, 1.5, 2 * GIB, [_vm("a", 30.0)]) for t in range(5)]
    assert advise.advise(bad, slo_pressure_pct=5.0).ram_ratio is None
    with pytest.raises(InvalidInput, match="SLO"):
        advise.advise(bad, slo_pressure_pct=0)
    with pytest.raises(InvalidInput, match="no interval"):
        advise.advise([_report(0, 1.0, GIB, [_vm("a", None)])], slo_pressure_pct=5.0)


POLICY = """
window_s = 60
reclaim_neighbours = 2
[classes.gold]
priority = 3
slo_pressure_pct = 1.0
domains = ["db-*"]
[classes.bronze]
priority = 1
slo_pressure_pct = 10.0
domains = ["*"]
balloon_step_pct = 25
floor_headroom_pct = 20
"""


@pytest.fixture
def loaded(tmp_path: Path) -> policy.MemPolicy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return policy.load(path)


def _current(balloon_mib: int, max_mib: int = 2048) -> dict[str, int]:
    return {"balloon_kib": balloon_mib * 1024, "max_kib": max_mib * 1024, "soft_limit_kib": 9007199254740991}


def test_a_suffering_vm_gets_its_balloon_back_and_the_richest_neighbour_gives_memory(loaded):
    reports = [_report(t, 1.0, 10 * GIB, [
        _vm("db-1", 5.0, balloon=GIB),  # ballooned to 1 GiB and stalling 5 %
        _vm("web-rich", 0.0, guest_available=1536 * MIB),  # uses 512 MiB of 2 GiB
        _vm("web-poor", 0.0, guest_available=256 * MIB),  # uses 1792 MiB
        _vm("web-blind", 0.0, guest_total=None, guest_available=None),  # no guest stats: never ballooned
    ]) for t in range(10)]  # fmt: skip
    rows = policy.standings(loaded, reports)
    assert [r.violated for r in rows] == [True, False, False, False]
    current = {"db-1": _current(1024), "web-rich": _current(2048), "web-poor": _current(2048),
               "web-blind": _current(2048)}  # fmt: skip
    actions = {(a.domain, a.param): a for a in policy.plan_actions(loaded, rows, current)}
    assert actions[("db-1", "balloon_kib")].new == 2048 * 1024
    # rich: 2048 − 25 % of 2048 = 1536 MiB, above its floor 512 + 20 % of 2048 = 921.6 MiB
    assert actions[("web-rich", "balloon_kib")].new == 1536 * 1024
    # poor: floor 1792 + 409.6 MiB > its balloon: not shrunk at all
    assert ("web-poor", "balloon_kib") not in actions
    assert not any(a.domain == "web-blind" for a in actions.values())
    soft = actions[("web-rich", "soft_limit_kib")]
    assert soft.old == 9007199254740991 and soft.new == 1536 * 1024  # RSS 1 GiB − 512 MiB, floored at the target


def test_no_violation_no_action_and_stopped_domains_are_left_alone(loaded):
    calm = [_report(0, 1.0, 10 * GIB, [_vm("db-1", 0.1, balloon=GIB), _vm("web", 0.0)])]
    assert policy.plan_actions(loaded, policy.standings(loaded, calm), {"db-1": _current(1024)}) == []
    hot = [_report(0, 1.0, 10 * GIB, [_vm("db-1", 9.0, balloon=GIB), _vm("web", 0.0)])]
    assert policy.plan_actions(loaded, policy.standings(loaded, hot), {}) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [("[classes.a]\npriority = 1\ndomains = ['*']\n", "slo_pressure_pct"),
     ("classes = 3", "classes"), ("not toml [", "not valid TOML"),
     ("[classes.a]\npriority = 1\nslo_pressure_pct = 5\ndomains = ['*']\nfloor_headroom_pct = 1\n",
      "floor_headroom_pct")],
)  # fmt: skip
def test_bad_policy_files_are_one_line_invalid_input(tmp_path: Path, text: str, message: str):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        policy.load(path)
