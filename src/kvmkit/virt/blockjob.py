"""Block jobs through libvirt, awaited on BLOCK_JOB_2 events: commit an active overlay back and pivot."""

from __future__ import annotations

import threading

import libvirt

from kvmkit.errors import OperationFailed


class _JobWatch:
    """Collects block-job events of one domain, keyed by disk target."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self.conn = conn
        self.cond = threading.Condition()
        self.status: dict[str, int] = {}
        uuid = dom.UUIDString()

        def callback(_conn, d, disk, _type, status, _opaque) -> None:
            if d.UUIDString() != uuid:
                return
            with self.cond:
                self.status[disk] = status
                self.cond.notify_all()

        self.callback_id = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, callback, None)

    def wait(self, target: str, wanted: set[int], timeout_s: float) -> int:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.status.get(target) in wanted, timeout=timeout_s)
            if not ok:
                raise OperationFailed(f"disk {target}: block job did not reach {wanted} within {timeout_s:.0f} s")
            return self.status.pop(target)

    def close(self) -> None:
        try:
            self.conn.domainEventDeregisterAny(self.callback_id)
        except libvirt.libvirtError:
            pass


def commit_active(conn: libvirt.virConnect, dom: libvirt.virDomain, targets: list[str],
                  timeout_s: float = 600.0) -> None:
    """Commit each disk's active overlay into its backing image and pivot back to it, all disks in parallel."""
    watch = _JobWatch(conn, dom)
    try:
        for target in targets:
            dom.blockCommit(target, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        for target in targets:
            status = watch.wait(target, {libvirt.VIR_DOMAIN_BLOCK_JOB_READY, libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED},
                                timeout_s)
            if status == libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED:
                raise OperationFailed(f"disk {target}: block commit failed")
        for target in targets:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        for target in targets:
            status = watch.wait(target, {libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED,
                                         libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED}, timeout_s)
            if status == libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED:
                raise OperationFailed(f"disk {target}: pivot after block commit failed")
    except libvirt.libvirtError as exc:
        raise OperationFailed(f"VM {dom.name()}: block commit: {exc.get_error_message()}") from exc
    finally:
        watch.close()
