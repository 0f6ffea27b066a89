"""What judging a VM needs to know of its host, as data: read by edge.py, made by hand in tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmkit.tune.vm.measured import Contention


@dataclass(frozen=True)
class HostFacts:
    cpus: tuple[int, ...]  # online host CPUs
    numa_nodes: dict[int, tuple[int, ...]]  # node → its CPUs
    hugepages_free_kib: int  # free memory in the default hugepage pool
    vhost_net: bool  # /dev/vhost-net exists: libvirt uses the in-kernel backend for virtio-net
    pinned_elsewhere: frozenset[int] = frozenset()  # host CPUs other VMs pin vCPUs to
    contention: dict[str, Contention] = field(default_factory=dict)  # VM name → what a congestion history measured

    def node_of(self, cpu: int) -> int | None:
        return next((node for node, cpus in self.numa_nodes.items() if cpu in cpus), None)


def parse_cpuset(text: str, limit: int = 1 << 16) -> set[int]:
    """libvirt's cpuset syntax ('0-3,^2,6'); an unreadable one is the empty set (judged as 'not pinned')."""
    chosen: set[int] = set()
    excluded: set[int] = set()
    for part in text.split(",")[:1024]:
        part = part.strip()
        target = excluded if part.startswith("^") else chosen
        part = part.lstrip("^")
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if not 0 <= low <= high < limit:
                    return set()
                target.update(range(low, high + 1))
            elif part:
                target.add(int(part))
        except ValueError:
            return set()
    return chosen - excluded
