from pathlib import Path

import pytest

from kvmkit.errors import InvalidInput
from kvmkit.lab.domain import FileDisk, RbdDisk, VmSpec, disk_target, domain_xml
from kvmkit.lab.guest import GuestImage
from kvmkit.snapshot.drivers.file import FileDriver
from kvmkit.snapshot.drivers.registry import driver_for
from kvmkit.virt.disks import parse_disks


def test_disk_targets_follow_virtio_naming():
    assert [disk_target(i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]


def test_lab_domain_xml_parses_back_into_the_disks_it_was_made_from():
    spec = VmSpec(
        name="t", image=GuestImage(Path("/k"), Path("/i")), console_log=Path("/c"),
        disks=(FileDisk(Path("/pool/a.raw")), FileDisk(Path("/pool/b.qcow2"), "qcow2"),
               RbdDisk("rbd", "img", "127.0.0.1", 16789, Path("/ceph.conf"))),
    )
    disks = parse_disks(domain_xml(spec))
    assert [(d.target, d.kind, d.format, d.source) for d in disks] == [
        ("vda", "file", "raw", "/pool/a.raw"), ("vdb", "file", "qcow2", "/pool/b.qcow2"),
        ("vdc", "network", "raw", "rbd/img"),
    ]
    rbd = disks[2]
    assert rbd.protocol == "rbd" and rbd.hosts == (("127.0.0.1", 16789),) and rbd.config_file == "/ceph.conf"
    assert rbd.rbd_pool_image == ("rbd", "img")


def test_cdroms_readonly_and_sourceless_disks_are_not_snapshot_candidates():
    xml = """<domain><devices>
      <disk type='file' device='cdrom'><source file='/iso'/><target dev='hdc'/></disk>
      <disk type='file' device='disk'><source file='/ro'/><target dev='vdb'/><readonly/></disk>
      <disk type='file' device='disk'><target dev='vdc'/></disk>
      <disk type='block' device='disk'><driver type='raw'/><source dev='/dev/sdz'/><target dev='vdd'/></disk>
      <disk type='file' device='disk'><driver type='qcow2'/><source file='/top'/>
        <backingStore type='file'><source file='/base'/></backingStore><target dev='vde'/></disk>
    </devices></domain>"""
    disks = parse_disks(xml)
    assert [(d.target, d.kind) for d in disks] == [("vdd", "block"), ("vde", "file")]
    assert disks[1].has_backing_chain and not disks[0].has_backing_chain


def test_a_cloudstack_rbd_disk_parses_with_its_monitors_user_and_secret_and_no_conf():
    spec = VmSpec(name="t", image=GuestImage(Path("/k"), Path("/i")), console_log=Path("/c"),
                  disks=(RbdDisk("cloudstack", "0d6c-vol", "10.1.1.5", 6789, None, auth_username="cloudstack",
                                 secret_uuid="5e3f5c8e-1b1e-4c9f-8a55-0f5c2c1d9e77"),))
    (disk,) = parse_disks(domain_xml(spec))
    assert disk.config_file is None and disk.hosts == (("10.1.1.5", 6789),)
    assert (disk.auth_username, disk.auth_secret_uuid) == ("cloudstack", "5e3f5c8e-1b1e-4c9f-8a55-0f5c2c1d9e77")


def test_formats_and_protocols_no_driver_serves_are_one_line_naming_the_disk():
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver type='vmdk'/><source file='/p/a.vmdk'/><target dev='vda'/></disk>
      <disk type='network' device='disk'><driver type='raw'/><source protocol='nbd' name='exp'>
        <host name='10.0.0.9' port='10809'/></source><target dev='vdb'/></disk>
    </devices></domain>"""
    for disk in parse_disks(xml):
        with pytest.raises(InvalidInput, match=f"disk {disk.target} .*(vmdk|nbd).*no kvmkit storage driver serves it"):
            driver_for(disk, [FileDriver()])
