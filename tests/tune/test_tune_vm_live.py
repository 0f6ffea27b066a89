"""`kvmkit tune vm` on real lab VMs: judge, apply (journaled), roll back; CloudStack- and Nova-owned VMs get the
orchestrator's knobs and are never redefined."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from tests.conftest import lab_vm

pytestmark = pytest.mark.lab

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"


def kvmkit(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def drop_vm(lab_state, name: str) -> None:
    """Remove a running lab VM once its test is done: the host's two cores are shared with other labs."""
    from kvmkit.lab import lab
    from kvmkit.lab.state import load

    lab.remove_vm(load(lab_state.dir), name)


@pytest.fixture()
def env(tmp_path: Path, lab_state) -> dict[str, str]:
    return {**os.environ, "KVMKIT_STATE_DIR": str(tmp_path / "state"), "KVMKIT_LIBVIRT_URI": lab_state.uri}


def _xml(conn, name: str) -> str:
    import libvirt

    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_apply_fixes_the_iothread_and_rollback_restores_the_definition(lab_state, conn, env, tmp_path):
    name = lab_vm(lab_state, f"{lab_state.dir.name}-tv1", file_disks=1, rbd_disks=0, size_mib=64, start=False)
    before = _xml(conn, name)
    checked = kvmkit(env, "tune", "vm", name, "--goal", "throughput", "--json")
    assert checked.returncode == 1, checked.stderr  # the lab VM's disk has no iothread: a FAIL for throughput
    report = json.loads(checked.stdout)[0]
    iothread = next(f for f in report["findings"] if f["check"] == "disk.iothread:vda")
    assert iothread["status"] == "FAIL" and "<iothreads>1</iothreads>" in iothread["fix_after"]
    assert report["owner"] is None

    dry = kvmkit(env, "tune", "vm", "apply", name, "--goal", "throughput", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _xml(conn, name) == before  # a dry run changes nothing

    applied = kvmkit(env, "tune", "vm", "apply", name, "--goal", "throughput", "--yes", "--json")
    assert applied.returncode == 0, applied.stderr
    outcome = json.loads(applied.stdout)[0]
    assert "disk.iothread:vda" in outcome["fixed"]
    journal = Path(outcome["journal"])
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    after = _xml(conn, name)
    assert re.search(r"<iothreads>1</iothreads>", after) and "iothread='1'" in after
    assert kvmkit(env, "tune", "vm", name, "--goal", "throughput").returncode == 0  # nothing left to FAIL

    again = kvmkit(env, "tune", "vm", "apply", name, "--goal", "throughput", "--yes")
    assert again.returncode == 0  # nothing left to fix: no second journal needed, nothing refused

    rolled = kvmkit(env, "tune", "vm", "rollback", name, "--yes")
    assert rolled.returncode == 0, rolled.stderr
    assert _xml(conn, name) == before and not journal.exists()
    assert kvmkit(env, "tune", "vm", "rollback", name, "--yes").returncode == 3  # nothing left to roll back


def test_rollback_refuses_when_the_definition_changed_after_apply(lab_state, conn, env):
    import libvirt

    name = lab_vm(lab_state, f"{lab_state.dir.name}-tv1", file_disks=1, rbd_disks=0, size_mib=64, start=False)
    before = _xml(conn, name)
    assert kvmkit(env, "tune", "vm", "apply", name, "--goal", "throughput", "--yes").returncode == 0
    dom = conn.lookupByName(name)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "edited by someone else", None, None,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    refused = kvmkit(env, "tune", "vm", "rollback", name, "--yes")
    assert refused.returncode == 4 and "changed after" in refused.stderr
    assert kvmkit(env, "tune", "vm", "rollback", name, "--yes", "--force").returncode == 0
    assert _xml(conn, name) == before  # --force puts the original back whole: the later edit goes with it


def _owned(conn, lab_state, name: str, metadata: tuple[str, str, str] | None) -> str:
    import libvirt

    lab_vm(lab_state, name, file_disks=1, rbd_disks=0, size_mib=64, start=False)
    if metadata is not None:
        xml, key, uri = metadata
        conn.lookupByName(name).setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, key, uri,
                                            libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    return name


def test_a_nova_vm_gets_flavor_extra_specs_and_is_never_redefined(lab_state, conn, env):
    nova = ("<instance><name>web</name><flavor name='m1.small'><vcpus>1</vcpus></flavor></instance>", "nova",
            NOVA_NS)
    name = _owned(conn, lab_state, f"{lab_state.dir.name}-nova1", nova)
    before = _xml(conn, name)
    checked = kvmkit(env, "tune", "vm", name, "--goal", "latency")
    assert "managed by nova" in checked.stdout
    assert "hw:cpu_policy=dedicated" in checked.stdout and "hw:mem_page_size=large" in checked.stdout
    refused = kvmkit(env, "tune", "vm", "apply", name, "--goal", "latency", "--yes")
    assert refused.returncode == 4 and "managed by nova" in refused.stderr
    assert _xml(conn, name) == before


def test_a_cloudstack_vm_gets_vm_details_and_extraconfig_and_is_never_redefined(lab_state, conn, env):
    digits = "".join(c for c in lab_state.dir.name if c.isdigit()) or "9"
    name = _owned(conn, lab_state, f"i-{digits}-{len(digits) + 100}-VM", None)  # CloudStack's own naming
    before = _xml(conn, name)
    checked = kvmkit(env, "tune", "vm", name, "--goal", "latency", "--json")
    report = json.loads(checked.stdout)[0]
    assert report["owner"] == "cloudstack"
    pinning = next(f for f in report["findings"] if f["check"] == "cpu.pinning")
    assert "extraconfig" in pinning["knobs"]["cloudstack"] and "<cputune>" in pinning["fix_after"]
    shown = kvmkit(env, "tune", "vm", name, "--goal", "latency")
    assert "extraconfig: <cputune>" in shown.stdout
    refused = kvmkit(env, "tune", "vm", "apply", name, "--goal", "latency", "--yes")
    assert refused.returncode == 4 and "managed by cloudstack" in refused.stderr
    assert _xml(conn, name) == before


def test_measure_benches_the_iothread_fix_before_and_after_and_rolls_it_back(lab_state, conn, env):
    from kvmkit.lab import lab
    from kvmkit.tune.vm.measure import verdict

    name = lab_vm(lab_state, f"{lab_state.dir.name}-tvfio", file_disks=1, rbd_disks=0, size_mib=128,
                  with_fio=True, memory_mib=lab.FIO_GUEST_MIB)
    before = _xml(conn, name)
    try:
        out = kvmkit(env, "tune", "vm", "measure", name, "--goal", "throughput", "--only", "disk.iothread:vda",
                     "--target", "/mnt/vda/fio.dat", "--size", "16M", "--runtime", "1", "--shutdown-timeout",
                     "10", "--undo", "--yes", "--json", timeout=1200)
        after_undo = _xml(conn, name)
    finally:
        drop_vm(lab_state, name)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["fixed"] == ["disk.iothread:vda"] and result["undone"] is True
    assert len(result["jobs"]) >= 7
    assert all(j["iops_before"] > 0 and j["iops_after"] > 0 for j in result["jobs"])
    assert result["verdict"] == verdict(result["iops_geomean_ratio"])
    assert after_undo == before  # --undo put the old definition back


def _live_pins(conn, name: str) -> tuple[list[tuple[bool, ...]], tuple[bool, ...]]:
    dom = conn.lookupByName(name)
    return [tuple(m) for m in dom.vcpuPinInfo(0)], tuple(dom.emulatorPinInfo(0))  # flags 0: the live VM


def test_apply_takes_the_new_pins_live_on_a_running_vm_and_rollback_puts_them_back(lab_state, conn, env):
    """Pinning is what libvirt changes without a restart: apply pins the running VM's vCPU and emulator thread now
    (virDomainPinVcpuFlags/PinEmulator, AFFECT_LIVE), rollback unpins them again."""
    name = lab_vm(lab_state, f"{lab_state.dir.name}-tvpin", file_disks=1, rbd_disks=0, size_mib=64)
    try:
        before_def = _xml(conn, name)
        vcpus_before, emulator_before = _live_pins(conn, name)
        assert all(all(m) for m in vcpus_before) and all(emulator_before)  # a fresh lab VM runs unpinned
        dry = kvmkit(env, "tune", "vm", "apply", name, "--goal", "latency", "--only", "cpu.pinning", "--dry-run",
                     "--json")
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)[0]["live"] and _live_pins(conn, name) == (vcpus_before, emulator_before)

        applied = kvmkit(env, "tune", "vm", "apply", name, "--goal", "latency", "--only", "cpu.pinning", "--yes",
                         "--json")
        assert applied.returncode == 0, applied.stderr
        outcome = json.loads(applied.stdout)[0]
        assert outcome["fixed"] == ["cpu.pinning"] and outcome["not_live"] == []
        assert outcome["restart_needed"] is False  # nothing but pins changed, and they were all taken live
        vcpus_now, emulator_now = _live_pins(conn, name)
        pinned = ET.fromstring(_xml(conn, name)).find("cputune")
        assert pinned is not None
        vcpu_cpu = int(pinned.find("vcpupin").get("cpuset"))
        assert vcpus_now[0] == tuple(cpu == vcpu_cpu for cpu in range(len(vcpus_now[0])))  # live = definition
        assert sum(emulator_now) == 1 and not emulator_now[vcpu_cpu]  # the emulator on another CPU, live

        rolled = kvmkit(env, "tune", "vm", "rollback", name, "--yes")
        assert rolled.returncode == 0, rolled.stderr
        assert _xml(conn, name) == before_def
        assert _live_pins(conn, name) == (vcpus_before, emulator_before)  # unpinned again, live
    finally:
        drop_vm(lab_state, name)
