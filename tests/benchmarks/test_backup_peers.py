"""`kvmkit backup bench --peers`: every tool runs every leg on the same image, restores are right, the JSON keys
the issue names are there, and the ratios are computed from the figures printed beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.benchmarks import backup_image, backup_peers
from kvmkit.errors import InvalidInput

KEYS = {"tool", "full_s", "incremental_s", "unchanged_s", "restore_s", "stored_bytes", "incremental_added_bytes",
        "incremental_read_bytes"}


def test_the_image_has_the_issue_mix_and_the_change_is_the_asked_share(tmp_path):
    image = tmp_path / "img"
    data = backup_image.make_image(image, 20)
    assert (image.stat().st_size, data) == (20 << 20, 12 << 20)  # 40 % holes
    raw = image.read_bytes()
    assert raw.count(b" status=") > 1000  # log-like text is there
    before = raw
    changed = backup_image.scatter_writes(image, 2)
    after = image.read_bytes()
    differing = sum(before[i: i + 4096] != after[i: i + 4096] for i in range(0, len(after), 4096))
    assert changed == int((20 << 20) // 4096 * 0.02) * 4096 and differing == changed // 4096


def tools_of(result: dict) -> dict[str, dict]:
    return {r["tool"]: r for r in result["results"]}


def test_unknown_peers_and_bad_sizes_are_one_clear_error(tmp_path):
    with pytest.raises(InvalidInput, match="unknown tool"):
        backup_peers.parse_peers("restic,duplicity")
    with pytest.raises(InvalidInput, match="--size"):
        backup_peers.run(tmp_path, 4, 2, [])


def test_the_sweep_takes_at_most_three_shares_each_in_range():
    assert backup_peers.parse_sweep("0.5,1,5") == [0.5, 1.0, 5.0]
    assert backup_peers.parse_sweep("") == []
    for bad in ("0.5,1,2,5", "0", "60", "a,b"):
        with pytest.raises(InvalidInput, match="--sweep"):
            backup_peers.parse_sweep(bad)


@pytest.mark.lab  # root, a loop device, restic and borg installed
def test_peer_bench_runs_every_leg_for_every_tool_and_checks_the_restores(tmp_path):
    missing = [t for t in ("restic", "borg") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} not installed: scripts/install.sh installs restic and borgbackup")
    kvmkit = Path(sys.executable).parent / "kvmkit"
    out = subprocess.run([str(kvmkit), "backup", "bench", "--peers", "restic,borg", "--change", "2", "--size", "32",
                          "--dir", str(tmp_path), "--json"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    tools = {r["tool"]: r for r in result["results"]}
    assert list(tools) == ["kvmkit", "kvmkit-enc", "restic", "borg"]  # kvmkit clear and encrypted, then the peers
    assert result["targets"]["encrypted_over_clear_full_s"] > 0  # the encrypted leg's ratio, from the same run
    for leg in ("full", "incremental", "restore"):  # the data path alone, and the unlock (scrypt) apart
        assert result["targets"][f"encrypted_over_clear_{leg}_in_process"] > 0
    assert 0 < result["targets"]["encrypted_unlock_s"] < tools_of(result)["kvmkit-enc"]["full_s"]
    sweep = result["sweep"]  # the default --sweep 0.5,1,5: kvmkit's incrementals after that many more writes
    assert [p["change_percent"] for p in sweep] == [0.5, 1.0, 5.0]
    for point in sweep:
        assert point["read_bytes"] == point["changed_bytes"] > 0  # exactly the newly written blocks
        assert point["over_full_in_process"] == round(point["in_process_s"]
                                                      / tools_of(result)["kvmkit"]["full_in_process_s"], 3)
    for record in tools.values():
        assert set(record) >= KEYS and record["restored_ok"] and record["full_s"] > 0
    assert result["changed_bytes"] == int((32 << 20) // 4096 * 0.02) * 4096
    ours = tools["kvmkit"]
    assert ours["change_method"] == "fiemap"
    assert ours["incremental_disk_read_bytes"] == result["changed_bytes"]  # exactly the changed blocks
    assert tools["borg"]["incremental_read_bytes"] > 10 * ours["incremental_disk_read_bytes"]
    assert result["ratios"]["borg"]["stored_bytes"] == round(ours["stored_bytes"] / tools["borg"]["stored_bytes"], 3)
    assert not any(tmp_path.iterdir())  # the loop filesystem and everything on it are gone
    assert os.path.exists(tmp_path)
