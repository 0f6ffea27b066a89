"""Declared capabilities and injected dependencies, without Ceph: the RBD driver built with stand-in rados/rbd
modules, as `default_drivers(settings, rados=…, rbd=…)` builds it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvmkit.config import CephSettings, Settings
from kvmkit.errors import EnvironmentProblem
from kvmkit.snapshot.drivers.base import Flattenable, GroupSnapshots, InUse, StorageDriver, capabilities
from kvmkit.snapshot.drivers.file import FileDriver
from kvmkit.snapshot.drivers.rbd import RbdDriver
from kvmkit.snapshot.drivers.registry import default_drivers
from kvmkit.virt.disks import Disk


class FakeRadosError(Exception):
    pass


def fake_modules(record: list):
    """A rados module whose cluster never connects (and records how it was asked to), and an empty rbd module."""

    class FakeRados:
        def __init__(self, rados_id: str, conffile: str, conf: dict) -> None:
            record.append((rados_id, conffile, conf))

        def connect(self, timeout: int) -> None:
            raise FakeRadosError("no monitor answered (fake)")

    rados = SimpleNamespace(Rados=FakeRados, Error=FakeRadosError, ObjectNotFound=FakeRadosError)
    return rados, SimpleNamespace(Error=Exception)


def test_default_drivers_pass_the_settings_and_modules_to_the_rbd_driver(tmp_path):
    record: list = []
    rados, rbd = fake_modules(record)
    conf = tmp_path / "ceph.conf"
    conf.write_text("")
    settings = Settings(ceph=CephSettings(conf=conf, client_id="kvm"))
    drivers = default_drivers(settings, rados=rados, rbd=rbd)
    assert [d.name for d in drivers] == ["file", "rbd"]
    disk = Disk(target="vdb", kind="network", format="raw", source="rbd/img", protocol="rbd",
                hosts=(("127.0.0.1", 6789),))
    with pytest.raises(EnvironmentProblem, match=r"cannot reach the Ceph cluster \(v1:127\.0\.0\.1:6789\)") as info:
        drivers[1].plan(disk, "s1", None)  # type: ignore[arg-type]
    assert isinstance(info.value.__cause__, FakeRadosError)  # the cause is kept for --debug
    rados_id, conffile, options = record[0]
    # the disk names its monitors: the connection is made from that record, not from kvmkit's ceph.conf
    assert (rados_id, conffile, options["mon_host"]) == ("kvm", None, "v1:127.0.0.1:6789")


def test_drivers_declare_their_capabilities_as_protocols():
    rados, rbd = fake_modules([])
    rbd_driver = RbdDriver(CephSettings(), rados=rados, rbd=rbd)
    assert isinstance(rbd_driver, StorageDriver) and isinstance(FileDriver(), StorageDriver)
    assert capabilities(rbd_driver) == ["InUse", "Flattenable", "GroupSnapshots", "Ownership"]
    assert capabilities(FileDriver()) == ["BarrierSnapshots", "Ownership"]
    assert isinstance(rbd_driver, InUse | Flattenable | GroupSnapshots)
    assert not isinstance(FileDriver(), InUse | Flattenable | GroupSnapshots)


def test_an_unanswering_cluster_is_one_clear_error_when_listing_snapshots():
    """recover's full pass lists the kvmkit snapshots of every domain's disks; a cluster that times out (another
    lab's, a dead one) must be a KvmkitError it can report and skip, not a traceback."""

    class FakeRbdError(Exception):
        pass

    class FakeTimeout(FakeRbdError):
        pass

    class FakeIoctx:
        def close(self) -> None:
            pass

    class FakeCluster:
        def __init__(self, **_kw) -> None:
            pass

        def connect(self, timeout: int) -> None:
            pass

        def open_ioctx(self, pool: str) -> FakeIoctx:
            return FakeIoctx()

    def image(*_args, **_kwargs):
        raise FakeTimeout("[errno 110] RBD operation timeout (fake)")

    rados = SimpleNamespace(Rados=FakeCluster, Error=FakeRadosError, ObjectNotFound=FakeRadosError)
    rbd = SimpleNamespace(Image=image, Error=FakeRbdError, ImageNotFound=type("NF", (FakeRbdError,), {}))
    driver = RbdDriver(CephSettings(), rados=rados, rbd=rbd)
    disk = Disk(target="vdb", kind="network", format="raw", source="rbd/theirs", protocol="rbd",
                hosts=(("127.0.0.1", 6789),))
    with pytest.raises(EnvironmentProblem, match="RBD rbd/theirs: cannot list its snapshots") as info:
        driver.owned(disk)
    assert isinstance(info.value.__cause__, FakeTimeout)
