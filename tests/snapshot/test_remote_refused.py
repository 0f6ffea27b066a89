"""A domain on another host: its file disks are paths there, so create, revert and delete refuse before anything
is touched. libvirt's test:///default stands in for the hypervisor; only the connection's idea of where it runs
is changed (a second host cannot run here), through a proxy that answers getURI/getHostname as a remote would."""

from __future__ import annotations

from contextlib import contextmanager

import libvirt
import pytest

from kvmkit.errors import InvalidInput
from kvmkit.snapshot import create as create_mod
from kvmkit.snapshot import lifecycle, revert
from tests.snapshot.offline import offline_rig

DOMAIN = ("<domain type='test'><name>far1</name><memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
          "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
          "<source file='/var/lib/libvirt/images/far1.qcow2'/><target dev='vda' bus='virtio'/></disk>"
          "</devices></domain>")


class RemoteLooking:
    """The real connection, claiming to be qemu+ssh://hv9/system on host hv9."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._conn = conn

    def getURI(self) -> str:
        return "qemu+ssh://hv9/system"

    def getHostname(self) -> str:
        return "hv9"

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


@pytest.fixture()
def remote(tmp_path, monkeypatch):
    with offline_rig(tmp_path) as rig:
        from kvmkit.virt.connection import connection as real_connection

        @contextmanager
        def remote_connection(uri: str):
            with real_connection(uri) as conn:
                conn.defineXML(DOMAIN).create() if "far1" not in conn.listDefinedDomains() + [
                    d.name() for d in conn.listAllDomains()] else None
                yield RemoteLooking(conn)

        for module in (create_mod, lifecycle, revert):
            monkeypatch.setattr(module, "connection", remote_connection)
        yield rig


def test_create_on_a_remote_host_with_file_disks_is_refused_and_nothing_is_made(remote):
    with pytest.raises(InvalidInput, match=r"disk vda .* is a path on hv9, not on this host: run kvmkit on hv9"):
        create_mod.create(remote.ctx, "far1", "s1")
    assert remote.rows() == [] and remote.kvmkit_snaps() == {}


def test_revert_and_delete_on_a_remote_host_are_refused_and_the_snapshot_stays(remote):
    from datetime import datetime

    from kvmkit.snapshot.model import DiskSnapshot, Mode, Snapshot, State

    with create_mod.connection(remote.ctx.uri) as conn:  # the patched one: it defines far1
        vm_uuid = conn.lookupByName("far1").UUIDString()
    handle = "/var/lib/libvirt/images/far1.qcow2@s1.kvmkit"
    remote.ctx.catalog.insert(Snapshot(
        vm_uuid=vm_uuid, vm="far1", name="s1", created=datetime(2026, 12, 1), mode=Mode.QUIESCED, state=State.READY,
        disks=[DiskSnapshot(target="vda", driver="file", source="/var/lib/libvirt/images/far1.qcow2", handle=handle,
                            format="qcow2")]))
    for call in (lambda: revert.revert(remote.ctx, "far1", "s1", force_stop=True),
                 lambda: lifecycle.delete(remote.ctx, "far1", "s1")):
        with pytest.raises(InvalidInput, match="run kvmkit on hv9"):
            call()
    assert remote.ctx.catalog.get(vm_uuid, "s1").state is State.READY
