"""Where each piece of advice comes from: the public documents a finding cites (no advice without a source)."""

LIBVIRT = "libvirt Domain XML format, https://libvirt.org/formatdomain.html"
RHEL = ("Red Hat Enterprise Linux 9, Configuring and managing virtualization, ch. 'Optimizing virtual machine "
        "performance', https://docs.redhat.com/en/documentation/red_hat_enterprise_linux/9/html/"
        "configuring_and_managing_virtualization/optimizing-virtual-machine-performance-in-rhel_configuring-and-"
        "managing-virtualization")
QEMU_BLOCK = "QEMU System Emulation User's Guide, -drive cache= and aio=, https://www.qemu.org/docs/master/system/invocation.html"
QEMU_HYPERV = "QEMU: Hyper-V Enlightenments, https://www.qemu.org/docs/master/system/i386/hyperv.html"
CEPH_QEMU = "Ceph: QEMU and block devices, running QEMU with RBD (cache), https://docs.ceph.com/en/latest/rbd/qemu-rbd/"
NOVA_SPECS = "Nova flavor extra specs, https://docs.openstack.org/nova/latest/configuration/extra-specs.html"
NOVA_IMAGE = "Glance useful image properties, https://docs.openstack.org/glance/latest/admin/useful-image-properties.html"
NOVA_CONF = "nova.conf [libvirt] options, https://docs.openstack.org/nova/latest/configuration/config.html"
CLOUDSTACK_VM = ("CloudStack Administration Guide, Virtual Machines: VM settings and extra configuration "
                 "(enable.additional.vm.configuration), https://docs.cloudstack.apache.org/en/latest/adminguide/"
                 "virtual_machines.html")


def at(section: str, *docs: str) -> str:
    """'libvirt …#section; Red Hat …' — the libvirt section anchor first, then the rest."""
    return "; ".join([f"{LIBVIRT}#{section}", *docs])
