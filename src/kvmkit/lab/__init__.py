"""`kvmkit lab`: a real local KVM lab (libvirt + QEMU + qemu-guest-agent, an XFS reflink pool, a one-node Ceph)."""
