"""`kvmkit bench net` on the lab: the netns reference path and a lab VM's virtio-net NIC on the lab bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import lab_vm

pytestmark = pytest.mark.lab


def kvmkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], capture_output=True, text=True, timeout=1200,
                          cwd="/", env=os.environ)


def test_bench_net_measures_the_reference_the_guest_and_the_guest_pair_paths_and_names_the_backend(lab_state):
    """One run, three paths: netns ↔ netns, guest ↔ host, and guest ↔ guest (server in net1, whose address the
    agent reports after --guest-ip set it; client in net2, addressed by --set-ip)."""
    from kvmkit.lab.net import bridge_for

    names = [lab_vm(lab_state, f"{lab_state.dir.name}-net{i}", file_disks=0, rbd_disks=0, network=True)
             for i in (1, 2)]
    bridge = bridge_for(lab_state.dir)
    try:
        out = kvmkit("bench", "net", "--vm", names[0], "--host-ip", bridge.host_ip, "--guest-ip",
                     f"{bridge.guest_ip(1)}/{bridge.prefix}", "--set-ip", f"{names[1]}={bridge.guest_ip(2)}/"
                     f"{bridge.prefix}", "--pair", f"{names[0]},{names[1]}", "--runs", "2", "--seconds", "1",
                     "--streams", "2", "--connect", lab_state.uri, "--json")
    finally:
        from kvmkit.lab import lab
        from kvmkit.lab.state import load

        for name in names:
            lab.remove_vm(load(lab_state.dir), name)  # the host's two cores are shared with other labs
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    reference, guest, pair = result["paths"]
    assert pair["path"] == f"guest {names[1]} ↔ guest {names[0]} (bridge, virtio-net both ends)"
    assert pair["backend"] == guest["backend"]  # both guests on the same host, same NIC definition
    assert pair["gbit_s"]["median"] > 0 and pair["small_pps"]["median"] > 0 and pair["vs_reference_gbit"] > 0
    assert pair["latency_us"]["p50"] <= pair["latency_us"]["p99"]
    assert pair["qemu_cpu_cores_per_gbit"]["median"] > 0  # both QEMU processes counted
    assert reference["backend"] == "kernel veth (no VM)" and reference["vs_reference_gbit"] == 1.0
    vhost = os.path.exists("/dev/vhost-net")
    assert guest["backend"].startswith("vhost-net" if vhost else "QEMU userspace virtio-net")
    for path in (reference, guest):
        assert len(path["gbit_s"]["values"]) == 2 and path["gbit_s"]["median"] > 0
        assert path["small_pps"]["median"] > 0
        assert path["latency_us"]["p50"] <= path["latency_us"]["p99"] <= path["latency_us"]["max"]
        assert path["host_cpu_cores_per_gbit"]["median"] > 0
    assert guest["qemu_cpu_cores_per_gbit"]["median"] > 0 and reference["qemu_cpu_cores_per_gbit"] is None
    assert guest["vs_reference_gbit"] > 0
    assert any("vhost-net" in note for note in result["notes"]) != vhost
    assert result["peak_rss_mib"] > 0 and result["wall_s"] > 0
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [ns for ns in netns if ns.startswith("kvmkit-")]  # the reference path's namespaces are gone


def test_bench_net_vm_without_host_ip_is_bad_input():
    out = kvmkit("bench", "net", "--vm", "web1")
    assert out.returncode == 2 and "--host-ip" in out.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--pair", "web1"], "give SERVER_VM,CLIENT_VM"),
    (["--pair", "web1,"], "give SERVER_VM,CLIENT_VM"),
    (["--set-ip", "web1"], "give VM=ADDRESS/PREFIX"),
    (["--set-ip", "web1=10.0.0.300/24"], "is not an address/prefix"),
])
def test_bench_net_bad_pair_or_address_is_one_line_and_measures_nothing(args, says):
    out = kvmkit("bench", "net", "--no-reference", *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr
