"""Local or refused: file and block disks are only handled on the host that runs the domain."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt
import pytest

from kvmkit.errors import InvalidInput
from kvmkit.virt.disks import Disk
from kvmkit.virt.host import is_this_host, require_local

HERE = {"hv1", "hv1.example.net", "localhost", "127.0.0.1"}
FILE = Disk("vda", "file", "qcow2", "/var/lib/libvirt/images/vm1.qcow2")
RBD = Disk("vdb", "network", "raw", "rbd/vm1", protocol="rbd", hosts=(("10.0.0.1", 6789),))


@dataclass
class Conn:
    """A connection as libvirt describes itself: its URI and the host it runs on (no remote host runs here)."""

    uri: str
    hostname: str

    def getURI(self) -> str:
        return self.uri

    def getHostname(self) -> str:
        return self.hostname


@pytest.mark.parametrize(("uri", "hostname", "local"), [
    ("qemu:///system", "anything", True),
    ("qemu+ssh://localhost/system", "hv1", True),
    ("qemu+ssh://hv1.example.net/system", "HV1.example.net", True),
    ("qemu+ssh://hv2/system", "hv2", False),
    ("qemu+tcp://10.0.0.2/system", "hv2.example.net", False),
])
def test_is_this_host_by_uri_and_the_hostname_libvirt_reports(uri, hostname, local):
    assert is_this_host(Conn(uri, hostname), HERE) is local


def test_file_disks_on_another_host_are_refused_in_one_line_naming_where_to_run():
    with pytest.raises(InvalidInput) as err:
        require_local(Conn("qemu+ssh://hv2/system", "hv2"), [RBD, FILE], HERE)
    assert "run kvmkit on hv2" in str(err.value) and "\n" not in str(err.value)


def test_rbd_disks_work_from_anywhere_and_local_files_pass():
    require_local(Conn("qemu+ssh://hv2/system", "hv2"), [RBD], HERE)
    require_local(Conn("qemu:///system", "hv1"), [FILE, RBD], HERE)


def test_a_real_local_connection_is_this_host():
    conn = libvirt.open("test:///default")
    try:
        assert is_this_host(conn)
    finally:
        conn.close()
