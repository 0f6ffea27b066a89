"""The pure arithmetic: readings in, percentages out — exact values on hand-made readings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmkit.congestion.calc import interval_report, numa_breakdown, percentile
from kvmkit.congestion.classify import classify_thread
from kvmkit.congestion.model import CgroupReading, CpuTimes, PsiReading, Reading, Skip, ThreadReading, VmReading

S = 1_000_000_000


def _thread(tid: int, name: str, run: int, wait: int, cpu: int | None = None) -> ThreadReading:
    return ThreadReading(tid, name, classify_thread(name), run, wait, cpu)


def _psi(some_us: int) -> PsiReading:
    return PsiReading(0.0, 0.0, some_us, 0.0, 0)


def _reading(t_s: float, vms: list[VmReading], psi_us: int = 0, skipped: tuple[Skip, ...] = ()) -> Reading:
    return Reading(int(t_s * S), 1000 + t_s, 4, {}, _psi(psi_us), tuple(vms), skipped)


def _vm(run_wait: dict[str, tuple[int, int]]) -> VmReading:
    names = {"CPU 0/KVM": 11, "CPU 1/KVM": 12, "worker": 13, "IO io1": 14}
    return VmReading(10, "a", tuple(_thread(names[n], n, r, w) for n, (r, w) in run_wait.items()), None)


def test_congestion_is_wait_delta_over_interval_and_vm_is_vcpu_mean():
    zero = (0, 0)
    before = _reading(0, [_vm({"CPU 0/KVM": zero, "CPU 1/KVM": zero, "worker": zero, "IO io1": zero})])
    after = _reading(
        2,
        [_vm({"CPU 0/KVM": (S, S // 2), "CPU 1/KVM": (S // 5, 0), "worker": (S // 10, S // 10), "IO io1": zero})],
        psi_us=500_000,
    )
    report = interval_report(before, after)
    vm = report.vms[0]
    assert report.interval_s == 2
    assert [(v.vcpu, v.utilisation_pct, v.congestion_pct) for v in vm.vcpus] == [(0, 50, 25), (1, 10, 0)]
    assert (vm.utilisation_pct, vm.congestion_pct, vm.congestion_max_pct) == (30, 12.5, 25)
    assert (vm.emulator.threads, vm.emulator.utilisation_pct, vm.emulator.congestion_pct) == (1, 5, 5)
    assert vm.iothreads.threads == 1 and vm.vhost.threads == 0
    host = report.host
    assert (host.vcpus_allocated, host.oversubscription) == (2, 0.5)
    assert host.vcpu_demand == pytest.approx((1.5 + 0.2) / 2)
    assert host.vcpu_load_pct == pytest.approx(60 / 4)  # 1.2 s of 2 s over 4 CPUs
    assert host.congestion_pct == 12.5 and host.psi_some_pct == 25


def test_threads_without_baseline_or_with_reused_tid_are_left_out():
    before = _reading(0, [VmReading(1, "a", (_thread(2, "CPU 0/KVM", 5 * S, 5 * S),), None)])
    after = _reading(1, [VmReading(1, "a", (_thread(2, "CPU 0/KVM", S, 0),  # counters went back: new thread
                                            _thread(3, "CPU 1/KVM", S, S)), None)])  # fmt: skip
    vm = interval_report(before, after).vms[0]
    assert vm.vcpus == [] and vm.vcpus_allocated == 2 and vm.congestion_pct == 0


def test_a_vm_seen_once_is_reported_as_skipped_with_its_reason():
    before = _reading(0, [], skipped=())
    after = _reading(1, [VmReading(7, "fresh", (_thread(8, "CPU 0/KVM", 0, 0),), None)],
                     skipped=(Skip("pid 9", "process exited during the reading"),))  # fmt: skip
    report = interval_report(before, after)
    assert report.vms == []
    assert {(s.what, s.reason) for s in report.skipped} == {
        ("fresh", "new since the previous reading: no baseline yet"),
        ("pid 9", "process exited during the reading"),
    }
    assert report.host.vcpus_allocated == 1  # allocated even before it can be measured


def test_cgroup_pressure_and_throttling_become_interval_percentages():
    cg0 = CgroupReading("/vm", _psi(0), 0, 0, 0)
    cg1 = CgroupReading("/vm", PsiReading(0, 0, 250_000, 0, 100_000), 10, 3, S // 10)
    t = (_thread(2, "CPU 0/KVM", 0, 0),)
    report = interval_report(_reading(0, [VmReading(1, "a", t, cg0)]), _reading(1, [VmReading(1, "a", t, cg1)]))
    cg = report.vms[0].cgroup
    assert cg is not None
    assert (cg.psi_some_pct, cg.psi_full_pct, cg.throttled_pct, cg.throttled_periods) == (25, 10, 10, 3)


def test_readings_out_of_order_are_refused():
    with pytest.raises(ValueError, match="out of order"):
        interval_report(_reading(2, []), _reading(1, []))


def test_numa_breakdown_groups_vcpus_by_the_node_they_last_ran_on():
    nodes = {0: frozenset({0, 1}), 1: frozenset({2, 3})}
    rows = numa_breakdown(nodes, [(0, 10.0), (1, 20.0), (3, 4.0), (None, 99.0)])
    assert [(r.node, r.pcpus, r.vcpus_last_seen, r.congestion_pct) for r in rows] == [(0, 2, 2, 15), (1, 2, 1, 4)]


@given(st.lists(st.floats(0, 100), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_numpy(values: list[float], q: float):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-9)


def test_percentile_of_nothing_is_zero_and_bad_q_is_refused():
    assert percentile([], 95) == 0.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_host_load_splits_into_qemu_other_and_steal():
    t0 = (_thread(11, "CPU 0/KVM", 0, 0), _thread(13, "worker", 0, 0))
    t1 = (_thread(11, "CPU 0/KVM", S, 0), _thread(13, "worker", S // 2, 0))  # 1.5 CPU-seconds of QEMU in 1 s
    before = Reading(0, 0.0, 4, {}, None, (VmReading(1, "a", t0, None),), (), CpuTimes(busy=0, steal=0, total=0))
    after = Reading(S, 1.0, 4, {}, None, (VmReading(1, "a", t1, None),), (), CpuTimes(busy=200, steal=40, total=400))
    host = interval_report(before, after).host
    assert (host.qemu_load_pct, host.other_load_pct, host.steal_pct) == (37.5, 12.5, 10)
    no_stat = interval_report(_reading(0, []), _reading(1, [])).host
    assert no_stat.steal_pct is None and no_stat.other_load_pct is None


@given(
    st.lists(
        st.tuples(st.integers(0, 10 * S), st.integers(0, 10 * S), st.integers(0, S), st.integers(0, S)),
        min_size=1,
        max_size=12,
    )
)
def test_random_counters_give_consistent_percentages(counters: list[tuple[int, int, int, int]]):
    """For any monotone counters: percentages are Δ/Δt, VM and host figures are means of their vCPUs."""
    before = [_thread(100 + i, f"CPU {i}/KVM", run, wait) for i, (run, wait, _, _) in enumerate(counters)]
    after = [_thread(100 + i, f"CPU {i}/KVM", run + dr, wait + dw) for i, (run, wait, dr, dw) in enumerate(counters)]
    report = interval_report(
        _reading(0, [VmReading(1, "vm", tuple(before), None)]), _reading(2, [VmReading(1, "vm", tuple(after), None)])
    )
    (vm,) = report.vms
    expected = [100 * dw / (2 * S) for *_, dw in counters]
    assert [v.congestion_pct for v in vm.vcpus] == pytest.approx(expected, abs=1e-3)
    assert vm.congestion_pct == pytest.approx(sum(expected) / len(expected), abs=1e-3)
    assert report.host.congestion_pct == pytest.approx(vm.congestion_pct, abs=1e-3)
    assert vm.congestion_max_pct == pytest.approx(max(expected), abs=1e-3)
    assert 0 <= report.host.congestion_p95_pct <= vm.congestion_max_pct + 1e-9
    assert report.host.vcpu_demand == pytest.approx(sum(dr + dw for *_, dr, dw in counters) / (2 * S), abs=1e-3)


def _capped(run: int, wait: int, throttled: int | None) -> VmReading:
    name = "CPU 0/KVM"
    return VmReading(10, "capped", (ThreadReading(11, name, classify_thread(name), run, wait, None, throttled),), None)


def test_run_delay_splits_into_contention_and_the_vcpus_own_throttling():
    report = interval_report(_reading(0, [_capped(0, 0, 0)]), _reading(1, [_capped(S // 5, 4 * S // 5, 3 * S // 5)]))
    (vm,) = report.vms
    (vcpu,) = vm.vcpus
    assert (vcpu.congestion_pct, vcpu.throttled_pct, vcpu.contention_pct) == (80.0, 60.0, 20.0)
    assert (vm.contention_pct, vm.throttled_pct, vm.slo_pct) == (20.0, 60.0, 20.0)
    assert (report.host.contention_pct, report.host.throttled_pct, report.host.slo_pct) == (20.0, 60.0, 20.0)
    assert report.host.vcpu_demand == pytest.approx(0.4)  # run + contention: its own quota is not demand


def test_throttling_of_a_shared_cgroup_never_exceeds_the_threads_own_wait():
    report = interval_report(_reading(0, [_capped(0, 0, 0)]), _reading(1, [_capped(S // 2, S // 10, S)]))
    (vcpu,) = report.vms[0].vcpus
    assert (vcpu.throttled_pct, vcpu.contention_pct) == (10.0, 0.0)


def test_unknown_throttling_leaves_contention_unknown_and_slos_judge_congestion():
    report = interval_report(_reading(0, [_capped(0, 0, None)]), _reading(1, [_capped(S // 2, S // 4, None)]))
    vm = report.vms[0]
    assert vm.contention_pct is None and vm.throttled_pct is None and vm.vcpus[0].contention_pct is None
    assert vm.slo_pct == vm.congestion_pct == 25.0
