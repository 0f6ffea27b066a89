"""Every check against the two shipped captures, with answers known from how they were made."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kvmkit.tune.capture import view_of
from kvmkit.tune.checks import CHECKS, CHECKS_BY_ID, bracketed, cmdline_params, read_all, read_check
from kvmkit.tune.collect_host import qemu_memory_mib
from kvmkit.tune.hostfs import HostView
from kvmkit.tune.model import HOST

# check → (values on the synthetic Xeon, values on the dev VM); None = UNKNOWN on that host.
CPUS8 = [f"cpu{n}" for n in range(8)]
POLICIES8 = [f"policy{n}" for n in range(8)]
KNOWN = {
    "cpufreq_driver": ({HOST: "intel_pstate"}, {HOST: "none"}),
    "cpufreq_governor": (dict.fromkeys(POLICIES8, "powersave"), None),
    "epp": (dict.fromkeys(POLICIES8, "balance_performance"), None),
    "epb": (dict.fromkeys(CPUS8, 6), None),
    "turbo": ({HOST: True}, None),
    "cpuidle_driver": ({HOST: "intel_idle"}, {HOST: "none"}),
    "cstate_exit_latency_us": (dict.fromkeys(CPUS8, 170), None),
    "cstates_disabled": (dict.fromkeys(CPUS8, 0), None),
    "cmdline_max_cstate": ({HOST: None}, {HOST: None}),
    "cpu_dma_latency": ({HOST: 2000000000}, {HOST: 2000000000}),
    "smt": ({HOST: "on"}, {HOST: "notsupported"}),
    "halt_poll_ns": ({HOST: 200000}, {HOST: 200000}),
    "thp_enabled": ({HOST: "always"}, {HOST: "madvise"}),
    "thp_defrag": ({HOST: "madvise"}, {HOST: "madvise"}),
    "hugepages_coverage_pct": ({HOST: 67}, {HOST: 0}),  # Xeon: 16 GiB for 8 + 16 GiB; dev VM: 0 for the lab VM
    "numa_nodes": ({HOST: 2}, {HOST: 1}),
    "numa_balancing": ({HOST: 1}, {HOST: 0}),
    "ksm_run": ({HOST: 1}, {HOST: 0}),
    "swappiness": ({HOST: 60}, {HOST: 60}),
    "dirty_ratio": ({HOST: 20}, {HOST: 20}),
    "dirty_background_ratio": ({HOST: 10}, {HOST: 10}),
    "irqbalance": ({HOST: True}, {HOST: False}),
    "iommu_groups": ({HOST: 12}, {HOST: 0}),
    "iommu_passthrough": ({HOST: True}, {HOST: False}),
    "kvm_device": ({HOST: True}, {HOST: True}),
    "vhost_net": ({HOST: True}, {HOST: False}),
    "nohz_full": ({HOST: None}, {HOST: None}),
    "isolcpus": ({HOST: None}, {HOST: None}),
    "rcu_nocbs": ({HOST: None}, {HOST: None}),
    "clocksource": ({HOST: "tsc"}, {HOST: "tsc"}),
    "mitigations": ({HOST: None}, {HOST: "auto,no_guest_host,no_guest_guest"}),
    "io_scheduler": ({"nvme0n1": "none", "nvme1n1": "mq-deadline"}, {"vda": "mq-deadline"}),
    "tuned_profile": ({HOST: "virtual-host"}, {HOST: "not installed"}),
    "platform": (
        {
            "cpu": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
            "vendor": "Dell Inc.",
            "product": "PowerEdge R750",
            "bios": "1.10.2",
        },
        {"cpu": "AMD EPYC"},
    ),
}


def test_known_answers_cover_every_check_but_vulnerabilities():
    assert set(KNOWN) | {"cpu_vulnerabilities"} == set(CHECKS_BY_ID)


@pytest.mark.parametrize("check_id", sorted(KNOWN))
def test_check_reads_known_value_on_synthetic_xeon(check_id, xeon_readings):
    reading = xeon_readings[check_id]
    assert reading.unknown is None, reading.unknown
    assert reading.values == KNOWN[check_id][0]


@pytest.mark.parametrize("check_id", sorted(KNOWN))
def test_check_reads_known_value_or_unknown_on_dev_vm(check_id, dev_vm_readings):
    reading = dev_vm_readings[check_id]
    expected = KNOWN[check_id][1]
    if expected is None:
        assert reading.unknown, f"{check_id} should be UNKNOWN on the dev VM"
        assert reading.values == {}
    else:
        assert reading.unknown is None, reading.unknown
        assert reading.values == expected


def test_vulnerabilities_classified_per_bug(xeon_readings, dev_vm_readings):
    xeon = xeon_readings["cpu_vulnerabilities"]
    assert xeon.values["gather_data_sampling"] == "vulnerable"
    assert xeon.values["mmio_stale_data"] == "mitigated"
    assert xeon.values["l1tf"] == "not-affected"
    assert "No microcode" in xeon.detail
    assert "vulnerable" not in dev_vm_readings["cpu_vulnerabilities"].values.values()


def test_unknown_reasons_name_the_cause(dev_vm_readings):
    assert "no cpufreq driver" in dev_vm_readings["cpufreq_governor"].unknown
    assert "driver none" in dev_vm_readings["cstate_exit_latency_us"].unknown


def test_hugepages_without_any_vm_is_unknown_with_reason(xeon_folder: Path):
    for xml in (xeon_folder / "root/etc/libvirt/qemu").glob("*.xml"):
        xml.unlink()
    (xeon_folder / "probes/qemu_guests").write_text("")
    reading = read_check(view_of(xeon_folder), CHECKS_BY_ID["hugepages_coverage_pct"])
    assert "no libvirt domain definitions in /etc/libvirt/qemu and no running QEMU" in reading.unknown


def test_sources_point_at_the_file_each_value_came_from(xeon_readings):
    assert xeon_readings["swappiness"].sources == {HOST: "/proc/sys/vm/swappiness"}
    assert xeon_readings["io_scheduler"].sources["nvme1n1"] == "/sys/block/nvme1n1/queue/scheduler"
    assert xeon_readings["cpufreq_governor"].sources["policy3"].endswith("policy3/scaling_governor")


def test_empty_tree_gives_unknown_not_a_crash(tmp_path: Path):
    readings = read_all(HostView(tmp_path))
    assert len(readings) == len(CHECKS)
    unknown = {r.check for r in readings if r.unknown}
    # files that must exist on any Linux host are UNKNOWN; device presence is a plain "no"
    assert {"swappiness", "cpufreq_driver", "io_scheduler", "tuned_profile", "cpu_dma_latency"} <= unknown
    assert next(r for r in readings if r.check == "kvm_device").values == {HOST: False}


def test_garbage_value_is_unknown_with_the_file_named(tmp_path: Path):
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/swappiness").write_text("sixty\n")
    reading = read_check(HostView(tmp_path), CHECKS_BY_ID["swappiness"])
    assert reading.unknown and "/proc/sys/vm/swappiness" in reading.unknown and "sixty" in reading.unknown


def test_malformed_domain_xml_is_unknown(xeon_folder: Path):
    (xeon_folder / "root/etc/libvirt/qemu/web1.xml").write_text("<domain><memory>")
    reading = read_check(HostView(xeon_folder / "root"), CHECKS_BY_ID["hugepages_coverage_pct"])
    assert reading.unknown and "not valid XML" in reading.unknown


def test_recorded_error_keeps_its_original_reason(tmp_path: Path):
    host = HostView(tmp_path, recorded_errors={"/proc/sys/vm/swappiness": "Permission denied"})
    reading = read_check(host, CHECKS_BY_ID["swappiness"])
    assert reading.unknown == "/proc/sys/vm/swappiness: Permission denied"


def test_disabled_deep_state_lowers_worst_exit_latency(xeon_folder: Path):
    root = xeon_folder / "root"
    for n in range(8):
        (root / f"sys/devices/system/cpu/cpu{n}/cpuidle/state3/disable").write_text("1\n")
    readings = {r.check: r for r in read_all(HostView(root))}
    assert set(readings["cstate_exit_latency_us"].values.values()) == {4}
    assert set(readings["cstates_disabled"].values.values()) == {1}


@pytest.mark.parametrize(
    ("text", "word"),
    [("always [madvise] never", "madvise"), ("[none] mq-deadline", "none"), ("performance", "performance")],
)
def test_bracketed_picks_the_selected_word(text, word):
    assert bracketed(text) == word


def test_cmdline_stops_at_double_dash_and_keeps_flags(tmp_path: Path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("ro quiet nohz_full=2-7 -- isolcpus=1\n")
    params = cmdline_params(HostView(tmp_path))
    assert params == {"ro": None, "quiet": None, "nohz_full": "2-7"}


def test_live_host_reads_every_check_without_crashing():
    readings = read_all(HostView())
    assert [r.check for r in readings] == [c.id for c in CHECKS]
    for reading in readings:
        assert reading.unknown or reading.values, f"{reading.check}: neither a value nor a reason"
        assert not (reading.unknown and reading.values), f"{reading.check}: both a value and a reason"


@pytest.mark.parametrize(
    ("arg", "mib"),
    [("", 128), ("512", 512), ("2G", 2048), ("1024M", 1024), ("size=1G,slots=4,maxmem=8G", 1024), ("262144k", 256)],
)
def test_qemu_memory_argument_parsing(arg, mib):
    assert qemu_memory_mib(arg) == mib


def test_hugepages_fall_back_to_running_qemu(xeon_folder: Path):
    for xml in (xeon_folder / "root/etc/libvirt/qemu").glob("*.xml"):
        xml.unlink()
    (xeon_folder / "probes/qemu_guests").write_text("4242\t8G\n4343\tsize=24G,slots=2,maxmem=64G\n")
    reading = read_check(view_of(xeon_folder), CHECKS_BY_ID["hugepages_coverage_pct"])
    assert reading.values == {HOST: 50}  # 16 GiB reserved for 32 GiB of guests
    assert "2 running QEMU" in reading.detail


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_live_probe_sees_a_running_qemu_and_its_memory():
    """Start a paused, diskless QEMU (no CPU cost) and find it with its -m through the live probe."""
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-m", "96", "-S", "-display", "none", "-accel", "tcg", "-nodefaults"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline and not line:
            line = next((x for x in HostView().probe("qemu_guests").splitlines() if x.startswith(f"{proc.pid}\t")), "")
            time.sleep(0.05)
        assert line == f"{proc.pid}\t96"
    finally:
        proc.kill()
        proc.wait(timeout=10)
