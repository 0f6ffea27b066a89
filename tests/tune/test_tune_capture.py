"""capture → audit --from: a capture audits exactly like the host it came from; hostile archives are refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from kvmkit.errors import InvalidInput, NotFound
from kvmkit.tune.capture import TOP, capture, extract, opened
from kvmkit.tune.checks import CHECKS_BY_ID, read_all, read_check
from kvmkit.tune.diff import diff
from kvmkit.tune.hostfs import HostView

FIXTURES = Path(__file__).parent / "fixtures"
DEV_VM = FIXTURES / "dev-vm-live.tar.gz"
XEON = FIXTURES / "synthetic-xeon-2s.tar.gz"


def test_live_capture_reads_back_identically(tmp_path: Path):
    """Each check reads the same from the capture as from the host (before or after the capture was taken:
    the lab's VMs may start or stop meanwhile)."""
    before = read_all(HostView())
    archive = tmp_path / "host.tar.gz"
    archive.write_bytes(capture())
    after = read_all(HostView())
    with opened(archive) as (host, meta):
        for captured, was, now in zip(read_all(host), before, after, strict=True):
            assert captured in (was, now)
    assert meta["format"] == 1 and meta["hostname"]


def test_capture_of_a_capture_is_the_same_host(xeon_folder: Path, tmp_path: Path):
    again = tmp_path / "again.tar.gz"
    again.write_bytes(capture(xeon_folder / "root", xeon_folder / "probes"))
    with opened(again) as (host_again, _), opened(XEON) as (host, _):
        assert read_all(host_again) == read_all(host)


def test_capture_records_tool_failures_as_reasons(tmp_path: Path):
    archive = tmp_path / "host.tar.gz"
    archive.write_bytes(capture())
    with tarfile.open(archive) as tar:
        errors = json.load(tar.extractfile(f"{TOP}/errors.json"))
        names = tar.getnames()
    for tool in ("dmidecode", "tuned-adm"):
        assert f"probe:{tool}" in errors or f"{TOP}/probes/{tool}" in names


def test_diff_of_the_two_fixtures_names_the_known_differences():
    with opened(DEV_VM) as (a, _), opened(XEON) as (b, _):
        differences = {d.check: d for d in diff(read_all(a), read_all(b))}
    assert differences["smt"].a == "notsupported" and differences["smt"].b == "on"
    assert (
        differences["cpufreq_governor"].a == "UNKNOWN" and "no cpufreq driver" in differences["cpufreq_governor"].note
    )
    assert "swappiness" not in differences and "clocksource" not in differences


def test_diff_of_a_host_with_itself_is_empty():
    with opened(XEON) as (a, _), opened(XEON) as (b, _):
        assert diff(read_all(a), read_all(b)) == []


def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return path


@pytest.mark.parametrize("name", ["/etc/passwd", f"{TOP}/../../escape", "elsewhere/meta.json"])
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str):
    archive = _tar(tmp_path / "bad.tar.gz", [tarfile.TarInfo(name)])
    with pytest.raises(InvalidInput, match="unsafe member"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_links_in_a_capture_are_refused(tmp_path: Path):
    link = tarfile.TarInfo(f"{TOP}/root/proc/cmdline")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    with pytest.raises(InvalidInput, match="link or device"):
        extract(_tar(tmp_path / "bad.tar.gz", [link]), tmp_path / "out")


def test_not_a_tar_is_invalid_input(tmp_path: Path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(InvalidInput, match=r"not a readable tar\.gz"):
        extract(junk, tmp_path / "out")


def test_tar_without_meta_is_not_a_capture(tmp_path: Path):
    archive = _tar(tmp_path / "bare.tar.gz", [tarfile.TarInfo(f"{TOP}/root/proc/cmdline")])
    with pytest.raises(InvalidInput, match="not a kvmkit capture"):
        extract(archive, tmp_path / "out")


def test_missing_capture_is_not_found(tmp_path: Path):
    with pytest.raises(NotFound):
        extract(tmp_path / "nope.tar.gz", tmp_path / "out")


def test_capture_keeps_only_name_and_memory_of_domain_xml(tmp_path: Path):
    root = tmp_path / "root"
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB").mkdir(parents=True)
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").write_text("0\n")
    (root / "etc/libvirt/qemu").mkdir(parents=True)
    (root / "etc/libvirt/qemu/vm1.xml").write_text(
        "<domain type='kvm'><name>vm1</name><memory unit='GiB'>4</memory>"
        "<devices><graphics type='vnc' passwd='s3cret'/></devices></domain>"
    )
    (root / "etc/libvirt/qemu/zz-broken.xml").write_text("<domain><name>x</name><graphics passwd='s3cret'")
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(capture(root))
    with tarfile.open(archive) as tar:
        kept = tar.extractfile(f"{TOP}/root/etc/libvirt/qemu/vm1.xml").read().decode()
        broken = tar.extractfile(f"{TOP}/root/etc/libvirt/qemu/zz-broken.xml").read().decode()
    assert "s3cret" not in kept + broken
    assert kept.strip() == '<domain><name>vm1</name><memory unit="GiB">4</memory></domain>'
    with opened(archive) as (host, _):
        reading = read_check(host, CHECKS_BY_ID["hugepages_coverage_pct"])
    assert reading.unknown and "not valid XML" in reading.unknown  # the same verdict as on the host itself
