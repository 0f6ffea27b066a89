"""Who owns a VM's definition: an orchestrator that rewrites it at every start must be told, not overridden.

- Nova writes <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.x"> into <metadata>
  (nova/virt/libvirt/config.py, LibvirtConfigGuestMetaNovaInstance) and names domains instance-XXXXXXXX.
- CloudStack names user VMs i-<account>-<vm>-VM (system VMs r-/s-/v-<id>-VM) and, from 4.20, writes its own
  metadata element in a cloudstack.apache.org namespace.
"""

from __future__ import annotations

import re

from kvmkit.tune.vm.domain import NOVA_NS_PREFIX, DomainModel

CLOUDSTACK_NAME = re.compile(r"^[irsv]-\d+-(?:\d+-)?VM$|^i-\d+-\d+-[A-Za-z0-9._-]+$")
NOVA_NAME = re.compile(r"^instance-[0-9a-f]{8}$")


def owner(d: DomainModel) -> str | None:
    """'nova', 'cloudstack', or None when nobody but the operator defines this VM."""
    if any(ns.startswith(NOVA_NS_PREFIX) for ns in d.metadata_namespaces) or NOVA_NAME.match(d.name):
        return "nova"
    if any("cloudstack" in ns for ns in d.metadata_namespaces) or CLOUDSTACK_NAME.match(d.name):
        return "cloudstack"
    return None
