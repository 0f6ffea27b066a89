"""`kvmkit memory` end to end (typer's runner) on a real QEMU process started here (no libvirt, no lab)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvmkit.benchmarks.realqemu import available, spinning_guests
from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound
from kvmkit.memory.cli import app
from tests.memory.test_parse_calc import HOST_KEYS, VM_KEYS

runner = CliRunner()
pytestmark = pytest.mark.skipif(not available(), reason="qemu-system-x86_64 not installed")


def test_sample_json_has_exactly_the_issues_keys_and_reasons_for_nulls(tmp_path: Path):
    record = tmp_path / "memory.jsonl"
    with spinning_guests(1, 0, prefix="memcli") as (pid,):
        result = runner.invoke(app, ["sample", "--interval", "0.3", "--count", "2", "--json", "--pid", str(pid),
                                     "--no-libvirt", "--history", str(record)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 2
    for report in lines:
        assert set(report["host"]) - {"null_reasons", "detail"} == HOST_KEYS
        (vm,) = report["vms"]
        assert set(vm) - {"null_reasons", "detail"} == VM_KEYS - {"domain"} | {"vm"}  # printed: one key for the VM
        assert vm["vm"] == "memcli-0" and vm["pid"] == pid and vm["configured_bytes"] == 32 << 20
        assert vm["rss_bytes"] > 10 << 20 and 0 < vm["overhead_bytes"] <= vm["rss_bytes"]
        assert vm["balloon_bytes"] is None and "--no-libvirt" in vm["null_reasons"]["balloon_bytes"]
        for obj in (report["host"], vm):
            assert all(obj["null_reasons"].get(k) for k, v in obj.items() if v is None), obj
    assert len(record.read_text().splitlines()) == 2
    assert (record.stat().st_mode & 0o777) == 0o600


def test_top_refreshes_and_stops_after_count():
    with spinning_guests(1, 0, prefix="memtop") as (pid,):
        result = runner.invoke(app, ["top", "--interval", "0.3", "--count", "2", "--pid", str(pid), "--no-libvirt"])
    assert result.exit_code == 0, result.output
    assert "memtop-0" in result.output and "PSI some" in result.output


def test_an_unreachable_configured_libvirt_makes_balloon_figures_null_with_the_reason():
    """The host's libvirt down: what /proc says is still measured, and the balloon figures say why they are null.
    A libvirt the user named with --connect is another matter: exit 5, as every command that connects."""
    bad = "qemu:///system?socket=/nonexistent/sock"
    with spinning_guests(1, 0, prefix="memnolv") as (pid,):
        result = runner.invoke(app, ["sample", "--interval", "0.2", "--json", "--pid", str(pid)],
                               env={"KVMKIT_LIBVIRT_URI": bad})
        named = runner.invoke(app, ["sample", "--interval", "0.2", "--json", "--pid", str(pid), "--connect", bad])
    assert result.exit_code == 0, result.output
    (vm,) = json.loads(result.output)["vms"]
    assert vm["balloon_bytes"] is None and "libvirt unreachable" in vm["null_reasons"]["balloon_bytes"]
    assert isinstance(named.exception, EnvironmentProblem) and "cannot connect to libvirt at" in str(named.exception)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [(["sample", "--interval", "0", "--no-libvirt"], InvalidInput, "interval must be > 0"),
     (["sample", "--count", "0", "--no-libvirt"], InvalidInput, "count must be"),
     (["sample", "--pid", "999999999"], InvalidInput, "no such process")],
)  # fmt: skip
def test_bad_input_raises_the_one_line_kvmkit_error(args: list[str], error: type, message: str):
    result = runner.invoke(app, args)
    assert isinstance(result.exception, error), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_history_stream_names_a_bad_line(tmp_path: Path):
    from kvmkit.memory import history

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    with pytest.raises(InvalidInput, match=r"bad\.jsonl:1: not a memory report"):
        list(history.stream(bad))
    with pytest.raises(NotFound):
        list(history.stream(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--port", "70000", "--no-libvirt"], "not a TCP port"),
     (["--max-connections", "0", "--no-libvirt"], "--max-connections 0")],
)  # fmt: skip
def test_kvmkit_serve_refuses_bad_input_in_one_line(args: list[str], message: str):
    from kvmkit.serve import app as serve_app

    result = runner.invoke(serve_app, args)
    assert isinstance(result.exception, InvalidInput), result.output
    assert message in str(result.exception)


def test_a_pid_that_is_not_qemu_gets_no_guessed_vm_size():
    result = runner.invoke(app, ["sample", "--interval", "0.2", "--count", "1", "--json", "--pid", "1",
                                 "--no-libvirt"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[0])
    (vm,) = report["vms"]
    assert vm["configured_bytes"] is None and "is not a QEMU process" in vm["null_reasons"]["configured_bytes"]
    assert report["host"]["vm_configured_bytes"] == 0
