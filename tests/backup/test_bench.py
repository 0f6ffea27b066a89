"""`kvmkit backup bench` on a small source: every leg runs in the same process tree and the figures agree with
each other; --json keeps the fields the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmkit.benchmarks import backup as bench
from kvmkit.errors import InvalidInput

QUOTED = {"dd_mb_s", "backup_mb_s", "ratio_vs_dd", "written_bytes", "target_write_mb_s", "unchanged_mb_s",
          "peak_rss_mib", "manifest_bytes", "chunks"}  # fields the README and docs/backup.md quote
ADDED = {"dd_copy_mb_s", "ratio_vs_dd_copy", "tmpfs_backup_mb_s", "tmpfs_ratio_vs_dd", "backup_cpu_seconds",
         "tmpfs_backup_cpu_seconds", "sha256_mb_s", "cores", "workers", "rounds_detail"}


def test_bench_runs_every_leg_and_its_ratios_are_its_own_medians(tmp_path):
    result = bench.run(tmp_path / "src", 8, rounds=3, target_folder=tmp_path / "dst")
    assert len(result.rounds_detail) == 3 and result.compression == "zstd"
    assert result.copy_command == "dd bs=4M conv=fsync"
    assert result.size_bytes == result.data_bytes == 8 << 20
    assert result.backup_mb_s == pytest.approx(result.size_bytes / result.backup_seconds / 1e6, rel=0.01)
    assert result.ratio_vs_dd == pytest.approx(result.backup_mb_s / result.dd_mb_s, rel=0.01, abs=5e-4)
    assert result.ratio_vs_dd_copy == pytest.approx(result.backup_mb_s / result.dd_copy_mb_s, rel=0.01, abs=5e-4)
    assert result.tmpfs_ratio_vs_dd == pytest.approx(result.tmpfs_backup_mb_s / result.dd_mb_s, rel=0.01, abs=5e-4)
    assert sorted(r.backup_seconds for r in result.rounds_detail)[1] == result.backup_seconds
    assert 4 << 20 < result.written_bytes < 5 << 20  # the random half stored raw, the text half compressed
    assert result.chunks == 8 and result.unchanged_written == 0
    assert result.backup_cpu_seconds > 0 and result.sha256_mb_s > 0 and result.peak_rss_mib > 0
    assert result.tmpfs_target.startswith("/dev/shm/")
    leftovers = [p for p in (tmp_path / "src", tmp_path / "dst") if p.exists() and any(p.iterdir())]
    assert not leftovers and not Path(result.tmpfs_target).exists()


def test_bench_json_keeps_the_quoted_fields_and_adds_the_new_legs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kvmkit", "backup", "bench", "--size", "4", "--rounds", "1",
                          "--dir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= QUOTED | ADDED
    assert data["compression"] == "zstd" and data["rounds"] == 1 and len(data["rounds_detail"]) == 1


@pytest.mark.parametrize(("kwargs", "message"), [({"compression": "lz4"}, "--compression must be one of"),
                                                 ({"rounds": 0}, "--rounds ≥ 1")])
def test_bench_refuses_bad_input_before_writing_anything(tmp_path, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        bench.run(tmp_path, 4, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_sparse_source_is_copied_sparse_and_its_holes_are_never_read(tmp_path):
    result = bench.run(tmp_path, 1, sparse_gib=1, stride=64, rounds=1)
    assert result.copy_command.startswith("cp --sparse=always")
    assert result.data_bytes == 16 * 4096 and result.chunks == 16 and result.written_bytes < 16 * 8192
    assert not any(tmp_path.iterdir())
