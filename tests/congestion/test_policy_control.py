"""SLO policy → actions (pure), and the journal/apply/revert machinery around a scheduler backend."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kvmkit.congestion import control, policy
from kvmkit.congestion.model import HostReport, IntervalReport, ThreadGroupReport, VcpuReport, VmReport
from kvmkit.errors import InvalidInput, NotFound

POLICY = """
window_s = 60
percentile = 95
cap_neighbours = 1
[classes.gold]
priority = 3
slo_congestion_pct = 2.0
domains = ["db-*"]
shares_boost = 2.0
[classes.bronze]
priority = 1
slo_congestion_pct = 10.0
domains = ["*"]
cap_pct = 50
"""


def _vm(domain: str, congestion: float, utilisation: float, vcpus: int = 2) -> VmReport:
    group = ThreadGroupReport()
    rows = [VcpuReport(vcpu=i, tid=i, utilisation_pct=utilisation, congestion_pct=congestion) for i in range(vcpus)]
    return VmReport(domain=domain, pid=1, vcpus_allocated=vcpus, utilisation_pct=utilisation,
                    congestion_pct=congestion, congestion_max_pct=congestion, vcpus=rows,
                    emulator=group, iothreads=group, vhost=group)  # fmt: skip


def _report(t: float, vms: list[VmReport]) -> IntervalReport:
    host = HostReport(pcpus=2, vcpus_allocated=6, oversubscription=3, vcpu_demand=1, vcpu_load_pct=50,
                      congestion_pct=5, congestion_p95_pct=5, psi_some_avg10=None, psi_full_avg10=None,
                      psi_some_pct=None)  # fmt: skip
    return IntervalReport(time=t, interval_s=1, host=host, vms=vms)


@pytest.fixture
def loaded(tmp_path: Path) -> policy.Policy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return policy.load(path)


def _history() -> list[IntervalReport]:
    # db-1 suffers 4 % in 10 of 20 intervals (p95 = 4 > 2); batch-big is the noisiest bronze; batch-small idles
    return [
        _report(t, [_vm("db-1", 4.0 if t % 2 else 0.5, 30), _vm("batch-big", 3.0, 90, 4), _vm("batch-small", 1, 5)])
        for t in range(20)
    ]


def test_classes_match_in_file_order_and_p95_decides_violation(loaded: policy.Policy):
    rows = {r.domain: r for r in policy.standings(loaded, _history())}
    assert rows["db-1"].vm_class == "gold" and rows["db-1"].violated and rows["db-1"].congestion_pct == 4.0
    assert rows["batch-big"].vm_class == "bronze" and not rows["batch-big"].violated
    assert rows["db-1"].samples == 20


def test_violation_raises_sufferer_weight_and_caps_noisiest_lower_class(loaded: policy.Policy):
    rows = policy.standings(loaded, _history())
    current = {"db-1": {"cpu_shares": 1024, "vcpu_period": 100000, "vcpu_quota": -1},
               "batch-big": {"cpu_shares": 1024, "vcpu_period": 100000, "vcpu_quota": -1},
               "batch-small": {"cpu_shares": 1024, "vcpu_period": 100000, "vcpu_quota": -1}}  # fmt: skip
    actions = policy.plan_actions(loaded, rows, current)
    assert [(a.domain, a.param, a.old, a.new) for a in actions] == [
        ("db-1", "cpu_shares", 1024, 2048),
        ("batch-big", "vcpu_quota", -1, 50000),
    ]
    # already capped tighter: no new cap; sufferer already at max: no boost
    current["batch-big"]["vcpu_quota"] = 20000
    current["db-1"]["cpu_shares"] = 10000
    assert policy.plan_actions(loaded, rows, current) == []


def test_no_violation_no_action_and_stopped_domains_are_left_alone(loaded: policy.Policy):
    calm = [_report(t, [_vm("db-1", 0.5, 30), _vm("batch-big", 3.0, 90)]) for t in range(10)]
    assert policy.plan_actions(loaded, policy.standings(loaded, calm), {"db-1": {}, "batch-big": {}}) == []
    assert policy.plan_actions(loaded, policy.standings(loaded, _history()), {}) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes = {}", "classes"),
        ("[classes.g]\npriority = 1\nslo_congestion_pct = 150\ndomains = ['*']", "slo_congestion_pct"),
        ("[classes.g]\npriority = 1\nslo_congestion_pct = 5\ndomains = ['*']\nbogus = 1", "bogus"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_one_line_invalid_input(tmp_path: Path, text: str, message: str):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message) as raised:
        policy.load(path)
    assert "\n" not in str(raised.value)
    with pytest.raises(NotFound, match="does not exist"):
        policy.load(tmp_path / "absent.toml")


class MemoryScheduler:
    """A scheduler backend held in a dict: the journal/revert logic does not depend on what is behind it.
    (The libvirt backend is exercised against the lab's libvirtd by the lab test below.)"""

    def __init__(self, params: dict[str, dict[str, int]], broken: set[str] = frozenset()) -> None:
        self.params = params
        self.broken = broken

    def domains(self) -> list[str]:
        return sorted(self.params)

    def parameters(self, domain: str) -> dict[str, int]:
        if domain not in self.params:
            raise NotFound(f"no libvirt domain named {domain!r}")
        return dict(self.params[domain])

    def set_parameter(self, domain: str, param: str, value: int) -> None:
        if domain in self.broken:
            raise control.OperationFailed(f"{domain}: cannot set {param}={value}: broken")
        self.parameters(domain)
        self.params[domain][param] = value


def _actions() -> list[policy.Action]:
    return [policy.Action("db-1", "cpu_shares", 1024, 2048, "boost"),
            policy.Action("batch", "vcpu_quota", -1, 50000, "cap")]  # fmt: skip


def test_apply_journals_0600_and_revert_restores_newest_first(tmp_path: Path):
    backend = MemoryScheduler({"db-1": {"cpu_shares": 1024}, "batch": {"vcpu_quota": -1}})
    journal = control.Journal(tmp_path / "state" / "journal.jsonl")
    outcomes = control.apply(_actions(), backend, journal)
    assert [o.state for o in outcomes] == ["done", "done"]
    assert backend.params == {"db-1": {"cpu_shares": 2048}, "batch": {"vcpu_quota": 50000}}
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert [r["state"] for r in journal.records()] == ["intent", "done", "intent", "done"]
    reverted = control.revert(backend, journal)
    assert [(o.domain, o.state) for o in reverted] == [("batch", "reverted"), ("db-1", "reverted")]
    assert backend.params == {"db-1": {"cpu_shares": 1024}, "batch": {"vcpu_quota": -1}}
    assert control.revert(backend, journal) == []  # nothing left to undo


def test_dry_run_changes_and_journals_nothing(tmp_path: Path):
    backend = MemoryScheduler({"db-1": {"cpu_shares": 1024}, "batch": {"vcpu_quota": -1}})
    outcomes = control.apply(_actions(), backend, None)
    assert [o.state for o in outcomes] == ["planned", "planned"]
    assert backend.params["db-1"]["cpu_shares"] == 1024
    assert not (tmp_path / "journal.jsonl").exists()


def test_failures_are_recorded_and_revert_leaves_later_changes_alone(tmp_path: Path):
    backend = MemoryScheduler({"db-1": {"cpu_shares": 1024}, "batch": {"vcpu_quota": -1}}, broken={"batch"})
    journal = control.Journal(tmp_path / "journal.jsonl")
    outcomes = control.apply(_actions(), backend, journal)
    assert [o.state for o in outcomes] == ["done", "failed"] and "broken" in outcomes[1].detail
    backend.params["db-1"]["cpu_shares"] = 4096  # an operator changed it since
    dry = control.revert(backend, journal, dry_run=True)
    assert [(o.domain, o.state) for o in dry] == [("db-1", "skipped")] and "changed since" in dry[0].detail
    assert backend.params["db-1"]["cpu_shares"] == 4096


def test_slos_judge_contention_so_a_vm_waiting_for_its_own_cap_is_not_a_breach(loaded: policy.Policy):
    capped = _vm("db-capped", congestion=80.0, utilisation=20.0)
    capped.contention_pct, capped.throttled_pct = 0.5, 79.5
    for row in capped.vcpus:
        row.contention_pct, row.throttled_pct = 0.5, 79.5
    (row,) = policy.standings(loaded, [_report(0, [capped])])
    assert (row.congestion_pct, row.contention_pct, row.throttled_pct) == (80.0, 0.5, 79.5)
    assert not row.violated  # gold's SLO is 2 %: contention 0.5 % keeps it; its 80 % run delay is its own cap
