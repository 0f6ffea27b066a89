"""Lab ground truth for kvmkit memory: each test causes what it measures on real TCG guests of the test lab
(kvmkit.benchmarks.memory_lab: the same checks `kvmkit memory bench` prints).

One transient balloon guest (384 MiB, virtio balloon with 1 s stats, `balloon` initrd flavour) is shared by the
module; the session lab VM is the neighbour that must stay flat.
"""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from kvmkit.benchmarks.memory_lab import (
    KSM,
    Check,
    balloon_check,
    balloon_guest,
    ksm_check,
    pressure_check,
    rss_check,
)
from kvmkit.memory.balloon import LibvirtBalloons
from kvmkit.memory.collector import MemCollector
from kvmkit.memory.procfs import MemReader
from tests.conftest import TEST_LAB_DIR

pytestmark = pytest.mark.lab
NAME = f"{TEST_LAB_DIR.name}-mem"


@pytest.fixture(scope="module")
def mem_guest(lab_state) -> Iterator[tuple[libvirt.virDomain, str]]:
    """(the balloon guest, the session lab VM's name)."""
    from kvmkit.virt import connection  # noqa: F401  (keeps libvirt from printing agent pings to stderr)

    with balloon_guest(lab_state.uri, TEST_LAB_DIR, NAME) as dom:
        yield dom, lab_state.vms[0].name


@pytest.fixture
def collector(lab_state) -> Iterator[MemCollector]:
    balloons = LibvirtBalloons(lab_state.uri)
    fresh = MemReader(balloons=balloons.read, split_max_age_s=0.0, split_budget=None, events_every=1)
    with MemCollector(fresh) as collected:
        yield collected
    balloons.close()


def _all_ok(rows: list[Check]) -> None:
    bad = [row for row in rows if not row.ok]
    assert not bad, "\n".join(row.model_dump_json() for row in bad)


def test_qemu_rss_is_within_2_percent_of_proc_status_at_the_same_instant(mem_guest, collector):
    _, neighbour = mem_guest
    rows = rss_check(collector, [NAME, neighbour])
    assert len(rows) == 6
    _all_ok(rows)
    for vm in collector.reader.read().vms:
        if vm.domain in (NAME, neighbour):
            assert vm.split is not None and 0 < vm.split.guest_ram_rss <= (vm.configured_bytes or 0)


def test_balloon_inflate_via_libvirt_is_followed_and_the_guests_available_memory_drops(mem_guest, collector):
    dom, _ = mem_guest
    _all_ok(balloon_check(dom, collector))


def test_ksm_saving_of_two_vms_with_identical_pages_matches_the_kernels_counts(mem_guest, collector):
    if not KSM.exists():
        report = collector.sample() or collector.sample()
        assert report is not None
        assert report.host.ksm_saved_bytes is None and "KSM" in report.host.null_reasons["ksm_saved_bytes"]
        pytest.fail("this host's kernel has no KSM (/sys/kernel/mm/ksm): the null-with-reason path held, but the "
                    "lab set-up cannot check KSM savings")
    dom, neighbour = mem_guest
    _all_ok(ksm_check([dom, dom.connect().lookupByName(neighbour)], collector))


def test_a_guest_filling_memory_under_a_cgroup_limit_feels_pressure_and_its_neighbour_stays_flat(
    mem_guest, collector
):
    dom, neighbour = mem_guest
    _all_ok(pressure_check(dom, neighbour, collector))


def test_enforce_dry_run_changes_nothing_and_apply_revert_move_real_balloon_and_soft_limit(mem_guest, tmp_path):
    """A recording of the lab, judged by a policy the balloon guest breaks (SLO 0.001 % is broken by any stall,
    so the guest is ballooned down first and made to stall): dry run first, then the journaled change, then revert."""
    from typer.testing import CliRunner

    from kvmkit.memory import control
    from kvmkit.memory.cli import app

    dom, _ = mem_guest
    uri = dom.connect().getURI()
    backend = control.LibvirtMemory(uri)
    try:
        before = backend.parameters(NAME)
        assert before["balloon_kib"] == before["max_kib"] == 384 * 1024
        journal = control.Journal(tmp_path / "journal.jsonl")
        actions = [control.Action(NAME, "balloon_kib", before["balloon_kib"], 320 * 1024, "lab"),
                   control.Action(NAME, "soft_limit_kib", before["soft_limit_kib"], 300 * 1024, "lab")]  # fmt: skip
        planned = control.apply(actions, backend, None)
        assert [o.state for o in planned] == ["planned", "planned"] and backend.parameters(NAME) == before
        assert [o.state for o in control.apply(actions, backend, journal)] == ["done", "done"]
        changed = backend.parameters(NAME)
        assert abs(changed["balloon_kib"] - 320 * 1024) <= control.BALLOON_SLACK_KIB  # the guest got there
        assert changed["soft_limit_kib"] == 300 * 1024
        assert (tmp_path / "journal.jsonl").stat().st_mode & 0o777 == 0o600
        assert [o.state for o in control.revert(backend, journal, holds=control.holds)] == ["reverted", "reverted"]
        after = backend.parameters(NAME)
        assert abs(after["balloon_kib"] - before["balloon_kib"]) <= control.BALLOON_SLACK_KIB
        assert after["soft_limit_kib"] == before["soft_limit_kib"]
    finally:
        backend.close()
    # the CLI end to end on a real recording: sample → policy → enforce --dry-run → advise
    record = tmp_path / "memory.jsonl"
    runner = CliRunner()
    sampled = runner.invoke(app, ["sample", "--interval", "0.5", "--count", "3", "--json", "--connect", uri,
                                  "--history", str(record)])  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[classes.all]\npriority = 1\nslo_pressure_pct = 50\ndomains = ["*"]\n')
    dry = runner.invoke(app, ["enforce", "--policy", str(policy_file), "--history", str(record), "--dry-run",
                              "--connect", uri, "--json", "--journal", str(tmp_path / "j2.jsonl")])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert '"dry_run": true' in dry.output and not (tmp_path / "j2.jsonl").exists()
    advised = runner.invoke(app, ["advise", "--history", str(record), "--slo-pct", "5"])
    assert advised.exit_code == 0, advised.output
    assert "ram_ratio = " in advised.output
