"""Issue 15 item 7: `tune rollback` followed paths from its file without confining them; `tune audit --from` of a
4.7 MB capture reached 1.1 GB RSS. Both are bounded now."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from tests.tune.test_tune_apply import _plan_and_apply

from kvmkit.errors import InvalidInput
from kvmkit.tune import apply as tune_apply
from kvmkit.tune.capture import MAX_MEMBER_BYTES, TOP, extract


@pytest.mark.parametrize("path", ["/etc/kvmkit-victim", "/sys/../etc/kvmkit-victim", "/proc/sys/../../etc/x",
                                  "sys/kernel/mm/ksm/run", "/proc/self/mem", "/sys/link-out/x"])
def test_rollback_paths_are_confined_to_sysfs_and_proc_sys(xeon, tmp_path: Path, path: str):
    victim = xeon.root / "etc" / "kvmkit-victim"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("precious")
    (xeon.root / "sys" / "link-out").symlink_to(xeon.root / "etc")
    rollback_file = tmp_path / "state" / "rollback.json"
    _plan_and_apply(xeon, "latency", rollback_file, {"swappiness"})
    record = json.loads(rollback_file.read_text())
    swappiness = xeon.path("/proc/sys/vm/swappiness").read_text()
    record["changes"].append({**record["changes"][0], "path": path, "old": "owned"})
    rollback_file.write_text(json.dumps(record))
    with pytest.raises(InvalidInput, match=r"tune writes only kernel tunables|outside") as info:
        tune_apply.rollback(xeon, rollback_file)
    assert "\n" not in str(info.value)
    assert victim.read_text() == "precious"
    assert xeon.path("/proc/sys/vm/swappiness").read_text() == swappiness  # nothing was written at all
    assert rollback_file.exists()


def test_a_rollback_file_others_can_write_is_refused(xeon, tmp_path: Path):
    rollback_file = tmp_path / "rollback.json"
    _plan_and_apply(xeon, "latency", rollback_file, {"swappiness"})
    rollback_file.chmod(0o666)
    with pytest.raises(InvalidInput, match="writable by others"):
        tune_apply.rollback(xeon, rollback_file)


def _bomb(path: Path, members: list[tuple[str, int]]) -> Path:
    with tarfile.open(path, mode="w:gz", compresslevel=1) as tar:
        for name, size in members:
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_an_oversized_member_is_refused_from_its_header(tmp_path: Path):
    bomb = _bomb(tmp_path / "bomb.tar.gz", [("meta.json", 2), ("root/proc/cpuinfo", 64 << 20)])
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(InvalidInput, match=f"at most {MAX_MEMBER_BYTES}"):
        extract(bomb, tmp_path / "out")


def test_audit_from_a_gzip_bomb_capture_is_one_line_with_bounded_memory(tmp_path: Path):
    """Many members each under the cap, 400 MB in all, from a few hundred KB compressed."""
    bomb = _bomb(tmp_path / "bomb.tar.gz", [("meta.json", 2)] + [(f"root/f{i}", 8 << 20) for i in range(50)])
    child = subprocess.run(
        [sys.executable, "-c", "import runpy, sys\n"
         "sys.argv = ['kvmkit', 'tune', 'audit', '--from', sys.argv[1]]\n"
         "try:\n    runpy.run_module('kvmkit', run_name='__main__')\n"
         "finally:\n    print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))"
         " // 1024, file=sys.stderr)\n",
         str(bomb)], capture_output=True, text=True, timeout=120)
    *message, rss = child.stderr.strip().splitlines()
    print(f"audit --from a 400 MB gzip bomb: {message}, peak RSS {rss} MiB")
    assert child.returncode == 2 and len(message) == 1 and "unpacked" in message[0], child.stderr
    assert int(rss) < 150, rss
