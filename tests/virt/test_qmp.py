"""virt/qmp.py: QMP through libvirt with typed errors. Offline: libvirt's test driver has no QEMU monitor, so the
call fails in libvirt — a QmpError whose cause is libvirt's error. On the lab's QEMU: QEMU's own error classes."""

from __future__ import annotations

import pytest

from kvmkit.errors import OperationFailed
from kvmkit.virt import qmp
from kvmkit.virt.connection import connection, open_connection


def test_a_command_libvirt_cannot_pass_is_a_qmp_error_caused_by_libvirt():
    keeper = open_connection("test:///default")
    try:
        with connection("test:///default") as conn:
            dom = conn.lookupByName("test")  # the test driver's built-in running domain
            with pytest.raises(qmp.QmpError) as info:
                qmp.execute(dom, "query-status")
        assert not isinstance(info.value, qmp.ExecuteError) and isinstance(info.value, OperationFailed)
        assert info.value.command == "query-status" and "QMP query-status" in str(info.value)
        assert type(info.value.__cause__).__name__ == "libvirtError"
    finally:
        keeper.close()


@pytest.mark.lab
def test_qemu_refusals_keep_their_error_class(conn, lab_state):
    dom = conn.lookupByName(lab_state.vms[0].name)
    assert qmp.execute(dom, "query-status")["running"] is True
    with pytest.raises(qmp.ExecuteError) as info:
        qmp.execute(dom, "kvmkit-no-such-command")
    assert info.value.error_class == "CommandNotFound" and info.value.command == "kvmkit-no-such-command"
    with pytest.raises(qmp.ExecuteError) as info:
        qmp.execute(dom, "blockdev-del", {"node-name": "kvmkit-no-such-node"})
    assert info.value.error_class == "GenericError" and "kvmkit-no-such-node" in info.value.desc
