"""Pure parsers and arithmetic of kvmkit memory, and the collector on synthetic trees of host layouts this machine
does not have (cgroup v2 memory controller, pure v1, no PSI, no KSM, swap): every null names its reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmkit.benchmarks import memory_synth
from kvmkit.memory import parse
from kvmkit.memory.balloon import balloon_reading
from kvmkit.memory.calc import memory_report
from kvmkit.memory.model import MemoryReport
from kvmkit.memory.procfs import MemReader, proc_cgroup_memory
from kvmkit.virt.balloons import has_balloon

HOST_KEYS = {"ram_bytes", "vm_configured_bytes", "oversubscription", "available_bytes", "swap_in_bytes_per_s",
             "psi_some_avg10", "psi_full_avg10", "ksm_saved_bytes", "ksm_cpu_pct"}
VM_KEYS = {"domain", "pid", "configured_bytes", "balloon_bytes", "rss_bytes", "overhead_bytes", "major_faults_per_s",
           "swap_in_bytes_per_s", "psi_some_pct", "psi_full_pct", "oom_events", "guest_available_bytes"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["-m", "128"], 128 << 20), (["-m", "2G"], 2 << 30), (["-m", "size=131072k,slots=2,maxmem=1G"], 128 << 20),
     (["-m", "512M"], 512 << 20), (["-name", "x"], None)],
)  # fmt: skip
def test_qemu_memory_option_is_parsed_in_every_form_libvirt_and_people_use(argv, expected):
    assert parse.qemu_memory_bytes(["qemu-system-x86_64", *argv]) == expected


def test_a_malformed_memory_option_is_a_value_error():
    with pytest.raises(ValueError, match="not a size"):
        parse.qemu_memory_bytes(["qemu", "-m", "lots"])


def _block(size_kb: int, rss_kb: int, kps: int = 4, huge_kb: int = 0) -> str:
    return (f"7f00-7f01 rw-p 00000000 00:00 0\nSize: {size_kb} kB\nKernelPageSize: {kps} kB\nRss: {rss_kb} kB\n"
            f"Pss: {rss_kb} kB\nPrivate_Hugetlb: {huge_kb} kB\nAnonHugePages: 0 kB\nVmFlags: rd wr\n")  # fmt: skip


def test_ram_split_takes_the_exactly_sized_backend_not_the_bigger_idle_mapping_beside_it():
    # what a TCG QEMU of 128 MiB really maps: 131072 kB of guest RAM and a barely touched 133300 kB mapping
    smaps = _block(133300, 140) + _block(131072, 112640) + _block(32768, 30000) + _block(4096, 2000)
    split = parse.ram_split(smaps, 128 << 20, 0)
    assert split.guest_ram_rss == 112640 * 1024
    assert split.rss == (140 + 112640 + 30000 + 2000) * 1024
    assert not split.hugepage_backed


def test_ram_split_counts_hugetlb_pages_which_rss_leaves_out():
    split = parse.ram_split(_block(1 << 20, 0, kps=2048, huge_kb=512 * 1024) + _block(4096, 4096), 1 << 30, 0)
    assert split.hugepage_backed and split.hugetlb_bytes == split.guest_ram_rss == 512 << 20
    assert split.rss == 4 << 20


def test_proc_cgroup_gives_the_v2_path_and_the_v1_memory_path():
    text = ("4:memory:/machine/qemu-1-a.libvirt-qemu\n1:cpu:/machine/x/emulator\n"
            "0::/machine/qemu-1-a.libvirt-qemu/emulator\n")
    assert proc_cgroup_memory(text) == ("/machine/qemu-1-a.libvirt-qemu/emulator", "/machine/qemu-1-a.libvirt-qemu")


def test_balloon_stats_become_bytes_and_a_missing_device_is_said():
    stats = {"balloon.current": 100_000, "balloon.maximum": 131072, "balloon.usable": 50_000,
             "balloon.available": 98_000, "balloon.last-update": 5}  # fmt: skip
    reading = balloon_reading(stats, True)
    assert (reading.current_bytes, reading.guest_available_bytes) == (100_000 * 1024, 50_000 * 1024)
    assert reading.guest_stats
    assert not has_balloon("<domain><devices><memballoon model='none'/></devices></domain>")
    assert has_balloon("<domain><devices><memballoon model='virtio'/></devices></domain>")
    assert balloon_reading(stats, False).current_bytes is None


def _report(tmp_path: Path, **kwargs) -> MemoryReport:
    host = memory_synth.build(tmp_path, 3, **kwargs)
    with MemReader(proc=host.proc, sys=host.sys, split_budget=None) as reader:
        first = reader.read()
        time.sleep(0.1)
        memory_synth.advance(host, 0.1)
        return memory_report(first, reader.read())


def _nulls_have_reasons(report: MemoryReport) -> None:
    for obj in [report.host, *report.vms]:
        for key, value in obj.model_dump(exclude={"null_reasons", "detail"}).items():
            if value is None:
                assert obj.null_reasons.get(key), f"{key} is null without a reason"


def test_hybrid_host_without_swap_reports_v1_oom_and_says_why_swap_and_memory_high_are_null(tmp_path: Path):
    report = _report(tmp_path, layout="hybrid")
    assert set(report.host.model_dump()) == HOST_KEYS | {"null_reasons", "detail"}
    assert {vm.domain for vm in report.vms} == {"synth-0000", "synth-0001", "synth-0002"}
    vm = report.vms[0]
    assert set(vm.model_dump()) == VM_KEYS | {"null_reasons", "detail"}
    assert vm.oom_events == 0 and vm.detail.memory_max_events == 0  # from v1 memory.oom_control / failcnt
    assert "no memory.high" in vm.null_reasons["memory_high_events"]
    assert report.host.swap_in_bytes_per_s is None and "no swap" in report.host.null_reasons["swap_in_bytes_per_s"]
    assert vm.psi_some_pct == pytest.approx(20.0, rel=0.5)  # synthetic: 20 ms of stall per 100 ms advanced
    assert vm.overhead_bytes == 150 << 20 and vm.rss_bytes == 750 << 20
    assert report.host.ksm_saved_bytes == 2560 * memory_synth.PAGE
    assert report.host.oversubscription == pytest.approx(3 / 256, abs=1e-4)
    _nulls_have_reasons(report)


def test_cgroup_v2_host_with_swap_reads_memory_events_and_swap_in(tmp_path: Path):
    report = _report(tmp_path, layout="v2", swap=True)
    vm = report.vms[0]
    assert vm.detail.memory_high_events == 3 and vm.detail.memory_max_events == 1
    assert vm.swap_in_bytes_per_s == 0.0 and vm.detail.swap_in_source == "memory.stat pswpin"
    assert report.host.swap_in_bytes_per_s is not None and report.host.swap_in_bytes_per_s > 0
    _nulls_have_reasons(report)


def test_v1_host_without_psi_or_ksm_gives_nulls_with_reasons_never_a_crash(tmp_path: Path):
    report = _report(tmp_path, layout="v1", ksm=False, psi=False)
    host = report.host
    assert host.psi_some_avg10 is None and "PSI" in host.null_reasons["psi_some_avg10"]
    assert host.ksm_saved_bytes is None and "without KSM" in host.null_reasons["ksm_saved_bytes"]
    assert host.ksm_cpu_pct is None and host.null_reasons["ksm_cpu_pct"]
    vm = report.vms[0]
    assert vm.psi_some_pct is None and "root cgroup v2" in vm.null_reasons["psi_some_pct"]
    assert vm.oom_events == 0
    _nulls_have_reasons(report)


def test_a_vm_seen_for_the_first_time_has_no_rates_and_says_so(tmp_path: Path):
    host = memory_synth.build(tmp_path, 1)
    with MemReader(proc=host.proc, sys=host.sys) as reader:
        first = reader.read()
        time.sleep(0.05)
        later = reader.read()
    empty = type(first)(first.host, ())
    report = memory_report(empty, later)
    assert report.vms[0].major_faults_per_s is None
    assert "no baseline" in report.vms[0].null_reasons["major_faults_per_s"]


def test_readings_out_of_order_are_refused(tmp_path: Path):
    host = memory_synth.build(tmp_path, 1)
    with MemReader(proc=host.proc, sys=host.sys) as reader:
        a = reader.read()
        b = reader.read()
    with pytest.raises(ValueError, match="out of order"):
        memory_report(b, a)


def test_reader_caches_follow_the_live_vms(tmp_path: Path):
    import shutil

    host = memory_synth.build(tmp_path, 4)
    with MemReader(proc=host.proc, sys=host.sys) as reader:
        reader.read()
        assert reader.cached == 4
        for vm in host.vms[1:]:
            shutil.rmtree(Path(host.proc) / str(vm.pid))
        assert reader.open_files <= 4 * 4 + 1
        assert len(reader.read().vms) == 1
        assert reader.cached == 1 and reader.open_files <= 4 + 1


def test_smaps_reads_are_spread_over_rounds_and_refreshed_only_when_old(tmp_path: Path):
    host = memory_synth.build(tmp_path, 5)
    with MemReader(proc=host.proc, sys=host.sys, split_budget=2, split_max_age_s=600) as reader:
        counts = [sum(vm.split is not None for vm in reader.read().vms) for _ in range(4)]
        assert counts == [2, 4, 5, 5]  # two new splits a round, then none due for ten minutes
        missing = [vm for vm in MemReader(proc=host.proc, sys=host.sys, split_budget=0).read().vms]
        assert all("smaps not read yet" in vm.reasons["overhead_bytes"] for vm in missing)


def test_a_broken_libvirt_connection_is_reopened_once_by_the_balloon_reader():
    from kvmkit.memory.balloon import LibvirtBalloons

    balloons = LibvirtBalloons("test:///default")  # libvirt's in-memory driver: one running domain, "test"
    try:
        assert set(balloons.read()) == {"test"}
        balloons._conn.close()  # what a libvirtd restart does to a long-lived exporter's connection
        assert set(balloons.read()) == {"test"}
    finally:
        balloons.close()
