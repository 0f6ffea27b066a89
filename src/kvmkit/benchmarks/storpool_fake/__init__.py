"""A FAKE StorPool API — not StorPool. A StorPool cluster cannot run on these machines; this stands in for its
management API so kvmkit's StorPool driver is exercised through StorPool's own Python binding (`storpool.spapi.Api`)
over real HTTP and JSON, and lab VMs run on real block devices. It ships in the product only for
`kvmkit snapshot bench --storage storpool` and the `cloudstack-storpool` lab shape; no driver imports it.

What is real: HTTP on 127.0.0.1 in the binding's wire shapes; each volume a file on the lab's XFS reflink pool,
attached to this host as a loop device behind the links a StorPool client host has (`/dev/storpool/<name>` for named
volumes, `/dev/storpool-byid/<globalId>` for all); a snapshot a reflink of the volume's file; a revert a reflink back
in place (so guest data really goes back).

What it follows, each rule citing its source in cluster.py: unnamed volumes and anonymous snapshots addressed as
`~<globalId>`; revert and delete refused while attached; VolumesReassign `detach: "all"` / `force`; the 200-byte
name + tags rule; deleted snapshots listed `deleted: true` while volumes depend on them; transient errors on demand.
What it does not model: placement, replication, multi-cluster, latency (metadata operations here cost a FICLONE),
and every error name but `objectDoesNotExist` (the others start with `fake-`).
"""

from kvmkit.benchmarks.storpool_fake.cluster import NAME_AND_TAGS_BYTES, FakeApiError, name_and_tags_bytes
from kvmkit.benchmarks.storpool_fake.server import FakeStorPoolApi, running

__all__ = ["NAME_AND_TAGS_BYTES", "FakeApiError", "FakeStorPoolApi", "name_and_tags_bytes", "running"]
