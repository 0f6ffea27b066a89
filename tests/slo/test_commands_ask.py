"""`enforce` and `revert` change the host: without a terminal they need --yes, and change nothing until given it
(libvirt's test driver, loaded from a node file, stands in for the host the CLI process sees)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kvmkit.slo.journal import Journal, apply
from kvmkit.slo.policy import Action
from kvmkit.virt.tunables import LibvirtMemory


def kvmkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=Path(__file__).parents[2])


def node(path: Path, balloon_kib: int) -> str:
    """A libvirt test-driver node file with one running domain "test" whose balloon is at balloon_kib."""
    path.write_text(f"<node><domain type='test'><name>test</name><memory>4194304</memory>"
                    f"<currentMemory>{balloon_kib}</currentMemory><vcpu>1</vcpu><os><type>hvm</type></os>"
                    "</domain></node>")
    return f"test://{path}"


def test_revert_without_a_terminal_needs_yes_and_leaves_the_journal_alone_until_then(tmp_path):
    full, reclaimed = 4194304, 4194304 - 512 * 1024
    backend = LibvirtMemory(node(tmp_path / "before.xml", full))  # enforce ran here: full → reclaimed
    try:
        journal = tmp_path / "journal.jsonl"
        (done,) = apply([Action("test", "balloon_kib", full, reclaimed, "reclaim")], backend, Journal(journal))
        assert done.state == "done"
    finally:
        backend.close()
    host = node(tmp_path / "after.xml", reclaimed)  # the host as enforce left it, seen by the CLI's own process
    written = journal.read_bytes()
    refused = kvmkit("memory", "revert", "--connect", host, "--journal", str(journal))
    assert refused.returncode == 2 and "pass --yes" in refused.stderr and refused.stderr.count("\n") == 1
    assert journal.read_bytes() == written
    reverted = kvmkit("memory", "revert", "--connect", host, "--journal", str(journal), "--yes", "--json")
    assert reverted.returncode == 0, reverted.stderr
    assert '"reverted"' in reverted.stdout and journal.read_bytes() != written
