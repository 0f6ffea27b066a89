"""Classification of QEMU processes and threads: pure name rules, then a recorded /proc tree with edge cases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmkit.congestion.classify import classify_thread, vhost_owner
from kvmkit.congestion.kernelfiles import parse_cpu_list, parse_proc_cgroup
from kvmkit.congestion.model import ThreadKind
from kvmkit.congestion.procfs import ProcReader
from kvmkit.sampling.procfiles import parse_psi, vm_cgroup
from kvmkit.sampling.qemu import domain_from_cmdline, is_qemu

FIXTURE = Path(__file__).parent / "fixtures" / "proc_qemu.json"


@pytest.mark.parametrize(
    ("name", "kind", "label", "vcpu"),
    [
        ("CPU 0/KVM", ThreadKind.VCPU, "0", 0),
        ("CPU 17/TCG", ThreadKind.VCPU, "17", 17),
        ("IO iothread1", ThreadKind.IOTHREAD, "iothread1", None),
        ("vhost-4242", ThreadKind.VHOST, "vhost-4242", None),
        ("qemu-system-x86", ThreadKind.EMULATOR, "qemu-system-x86", None),
        ("worker", ThreadKind.EMULATOR, "worker", None),
        ("CPU x/KVM", ThreadKind.EMULATOR, "CPU x/KVM", None),
        ("vhost-", ThreadKind.EMULATOR, "vhost-", None),
    ],
)
def test_thread_names_classify_by_qemu_conventions(name: str, kind: ThreadKind, label: str, vcpu: int | None):
    cls = classify_thread(name)
    assert (cls.kind, cls.label, cls.vcpu) == (kind, label, vcpu)


def test_qemu_is_recognised_by_comm_prefix_or_exe():
    assert is_qemu("qemu-system-x86")  # comm is cut at 15 characters
    assert is_qemu("webvm", "qemu-system-aarch64")
    assert is_qemu("qemu-kvm")
    assert not is_qemu("bash", "bash")
    assert vhost_owner("vhost-12") == 12 and vhost_owner("vhostx") is None


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["qemu", "-name", "guest=db1,debug-threads=on"], "db1"),
        (["qemu", "-name", "web,process=qemu:web"], "web"),
        (["qemu", "-name", "debug-threads=on,guest=late"], "late"),
        (["qemu", "-name", "guest=a,,b,debug-threads=on"], "a,b"),
        (["qemu", "--name=guest=x"], "x"),
        (["qemu", "-m", "128"], None),
        (["qemu", "-name"], None),
        (["qemu", "-name", "debug-threads=on"], None),
    ],
)
def test_domain_name_comes_from_the_name_option(argv: list[str], name: str | None):
    assert domain_from_cmdline(argv) == name


@given(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1))
def test_any_domain_name_survives_qemu_comma_escaping(name: str):
    escaped = name.replace(",", ",,")
    assert domain_from_cmdline(["qemu", "-name", f"guest={escaped},debug-threads=on"]) == name


def test_parsers_of_kernel_formats():
    psi = parse_psi("some avg10=1.50 avg60=2.00 avg300=0.10 total=123\nfull avg10=0.00 avg60=0 avg300=0 total=7\n")
    assert (psi.some_avg10, psi.some_total_us, psi.full_total_us) == (1.5, 123, 7)
    assert parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").full_total_us is None
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_proc_cgroup("1:cpu,cpuacct:/machine/a\n0::/machine.slice/x/libvirt/emulator\n") == (
        "/machine.slice/x/libvirt/emulator",
        "/machine/a",
    )
    assert vm_cgroup("/machine.slice/x/libvirt/emulator") == "/machine.slice/x/libvirt"
    assert vm_cgroup("/user.slice") == "/user.slice"


def _write(root: Path, rel: str, content: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def _tree(tmp_path: Path) -> tuple[ProcReader, int]:
    """The recorded QEMU plus: a QEMU renamed with process=, a kernel vhost worker, a QEMU without
    debug-threads, a thread that vanished, a bash, and a libvirt-style cgroup with PSI and throttling."""
    recorded = json.loads(FIXTURE.read_text())
    proc, sys_root, cg = tmp_path / "proc", tmp_path / "sys", tmp_path / "cgroup"
    pid = recorded["pid"]
    for rel, content in recorded["files"].items():
        _write(proc, rel, content)
    os.symlink(recorded["exe"], proc / str(pid) / "exe")
    scope = "/machine.slice/machine-qemu.scope/libvirt"
    _write(proc, f"{pid}/cgroup", f"1:cpu,cpuacct:{scope}/emulator\n0::{scope}/emulator\n")
    _write(proc, "self/mounts", f"cgroup2 {cg}/unified cgroup2 rw 0 0\ncgroup {cg}/cpu cgroup rw,cpu,cpuacct 0 0\n")
    _write(
        cg,
        f"unified{scope}/cpu.pressure",
        "some avg10=3.00 avg60=1 avg300=0 total=5000\nfull avg10=0 avg60=0 avg300=0 total=10\n",
    )
    _write(cg, f"unified{scope}/cpu.stat", "usage_usec 10\n")  # hybrid: no throttling in v2 …
    _write(cg, f"cpu{scope}/cpu.stat", "nr_periods 10\nnr_throttled 2\nthrottled_time 3000\n")  # … but in v1
    # renamed QEMU (-name process=webvm): recognised through its exe link
    _write(proc, "500/comm", "webvm\n")
    _write(proc, "500/cmdline", "/usr/bin/qemu-system-x86_64\0-name\0web,process=webvm,debug-threads=on\0")
    _write(proc, "500/cgroup", "0::/\n")
    os.symlink("/usr/bin/qemu-system-x86_64", proc / "500" / "exe")
    _write(proc, "500/task/500/comm", "webvm\n")
    _write(proc, "500/task/500/schedstat", "10 20 1\n")
    _write(proc, "500/task/501/comm", "CPU 0/KVM\n")
    _write(proc, "500/task/501/schedstat", "1000 2000 3\n")
    _write(proc, "500/task/502/comm", "CPU 1/KVM\n")  # vanished between listdir and read: no schedstat
    # pre-6.4 kernel vhost worker serving pid 500: a separate kernel thread
    _write(proc, "600/comm", "vhost-500\n")
    _write(proc, "600/schedstat", "700 800 9\n")
    # QEMU without debug-threads: every thread carries the process name
    _write(proc, "700/comm", "qemu-system-x86\n")
    _write(proc, "700/cmdline", "qemu-system-x86_64\0-m\0064\0")
    _write(proc, "700/cgroup", "0::/\n")
    _write(proc, "700/task/700/comm", "qemu-system-x86\n")
    _write(proc, "700/task/700/schedstat", "5 5 1\n")
    _write(proc, "800/comm", "bash\n")
    _write(sys_root, "devices/system/cpu/online", "0-3\n")
    return ProcReader(proc=str(proc), sys=str(sys_root)), pid


def test_recorded_proc_tree_classifies_every_edge_case(tmp_path: Path):
    reader, pid = _tree(tmp_path)
    reading = reader.read()
    by_pid = {vm.pid: vm for vm in reading.vms}
    assert sorted(by_pid) == [500, 700, pid]
    recorded = by_pid[pid]
    assert recorded.domain == "rec-vm,prod"
    kinds = sorted((t.cls.kind.value, t.cls.label) for t in recorded.threads)
    assert ("vcpu", "0") in kinds and ("vcpu", "1") in kinds and ("iothread", "iothread1") in kinds
    assert all(k in ("vcpu", "iothread", "emulator") for k, _ in kinds)
    assert recorded.cgroup is not None and recorded.cgroup.path.endswith("/libvirt")
    assert recorded.cgroup.psi is not None and recorded.cgroup.psi.some_total_us == 5000
    assert recorded.cgroup.throttled_ns == 3000 and recorded.cgroup.nr_throttled == 2
    renamed = by_pid[500]
    assert renamed.domain == "web"
    assert sorted((t.cls.kind.value, t.tid) for t in renamed.threads) == [
        ("emulator", 500), ("vcpu", 501), ("vhost", 600)
    ]  # fmt: skip
    reasons = {s.what: s.reason for s in reading.skipped}
    assert "thread exited" in reasons["pid 500 tid 502"]
    assert "debug-threads" in reasons["pid-700"]
    assert "root cgroup" in reasons["web cgroup"]
    assert reading.pcpus == 4 and reading.host_psi is not None


def test_kernel_without_schedstat_or_psi_is_skipped_not_fatal(tmp_path: Path):
    reader_root = tmp_path / "proc"
    _write(reader_root, "42/comm", "qemu-system-x86\n")
    _write(reader_root, "self/mounts", "")
    reading = ProcReader(proc=str(reader_root), sys=str(tmp_path / "sys")).read()
    reasons = " ".join(s.reason for s in reading.skipped)
    assert reading.vms == () and "CONFIG_SCHED_INFO" in reasons and "PSI" in reasons
