"""Against the lab's real libvirtd: a transient domain is found by name in /proc, `domains` maps it, and
enforce/revert move its scheduler parameters through libvirt and back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.congestion import control
from kvmkit.congestion.cli import app
from kvmkit.congestion.model import ThreadKind, VmReading
from kvmkit.congestion.policy import Action
from kvmkit.congestion.procfs import ProcReader

NAME = "kvmkit-congestion-lab"
DOMAIN_XML = f"""<domain type='qemu'>
  <name>{NAME}</name><memory unit='MiB'>32</memory><vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


@pytest.fixture
def transient_vm(lab_state) -> Iterator[tuple[str, VmReading]]:
    """A 2-vCPU TCG domain without disks on the lab's libvirtd: (uri, its reading once both vCPUs exist)."""
    import libvirt

    conn = libvirt.open(lab_state.uri)
    domain = conn.createXML(DOMAIN_XML, 0)  # transient: gone when destroyed
    try:
        deadline = time.monotonic() + 10
        vm = None
        while vm is None and time.monotonic() < deadline:  # QEMU names vCPU threads as it creates them
            found = [v for v in ProcReader().read().vms if v.domain == NAME]
            if found and sum(t.cls.kind is ThreadKind.VCPU for t in found[0].threads) == 2:
                vm = found[0]
            time.sleep(0.05)
        assert vm is not None, "the domain's QEMU never showed two vCPU threads"
        yield lab_state.uri, vm
    finally:
        domain.destroy()
        conn.close()


@pytest.mark.lab
def test_domains_maps_libvirt_names_to_the_qemu_found_in_proc(transient_vm):
    uri, vm = transient_vm
    assert vm.cgroup is not None and "qemu" in vm.cgroup.path  # libvirt's cgroup, not the root
    result = CliRunner().invoke(app, ["domains", "--uri", uri])
    assert result.exit_code == 0, result.output
    assert NAME in result.output and str(vm.pid) in result.output


@pytest.mark.lab
def test_enforce_and_revert_move_real_libvirt_scheduler_parameters(transient_vm, tmp_path: Path):
    uri, _ = transient_vm
    backend = control.LibvirtScheduler(uri)
    try:
        before = backend.parameters(NAME)
        journal = control.Journal(tmp_path / "journal.jsonl")
        actions = [Action(NAME, "cpu_shares", before["cpu_shares"], before["cpu_shares"] * 2, "lab"),
                   Action(NAME, "vcpu_quota", before["vcpu_quota"], 50_000, "lab")]  # fmt: skip
        assert [o.state for o in control.apply(actions, backend, journal)] == ["done", "done"]
        changed = backend.parameters(NAME)
        assert (changed["cpu_shares"], changed["vcpu_quota"]) == (before["cpu_shares"] * 2, 50_000)
        assert [o.state for o in control.revert(backend, journal)] == ["reverted", "reverted"]
        after = backend.parameters(NAME)
        assert (after["cpu_shares"], after["vcpu_quota"]) == (before["cpu_shares"], before["vcpu_quota"])
    finally:
        backend.close()
