"""The hypervisor seam: everything kvmkit asks of libvirt and the guest agent goes through this package."""
