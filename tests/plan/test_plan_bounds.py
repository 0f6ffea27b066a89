"""Issue 15 item 7: a plan input could allocate gigabytes (`drive_bays = 40000`); plan files are bounded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvmkit.errors import InvalidInput
from kvmkit.plan import space
from kvmkit.plan.loader import load_plan
from tests.plan.conftest import EXAMPLE


def variant(tmp_path, old: str, new: str, name: str = "p.toml"):
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def test_forty_thousand_drive_bays_is_one_line_at_its_key(tmp_path):
    text = EXAMPLE.read_text()
    bays = next(line for line in text.splitlines() if line.startswith("drive_bays"))
    with pytest.raises(InvalidInput, match=r"drive_bays.*less than or equal to 256") as info:
        load_plan(variant(tmp_path, bays, "drive_bays = 40000"))
    assert "\n" not in str(info.value)


def test_a_space_too_large_is_refused_before_any_array_is_made(tmp_path, monkeypatch):
    plan = load_plan(EXAMPLE)
    size = space.space_size(plan)
    assert size >= len(space.enumerate_space(plan))  # an upper bound of what is really made
    monkeypatch.setattr(space, "MAX_CONFIGS", size - 1)
    with pytest.raises(InvalidInput, match="configurations"):
        space.enumerate_space(plan)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "billion-laughs"])
def test_plan_inputs_that_are_not_small_files_are_one_line_and_quick(tmp_path, target):
    if target == "fifo":
        os.mkfifo(tmp_path / "p.toml")
        target = str(tmp_path / "p.toml")
    elif target == "billion-laughs":
        lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
        (tmp_path / "p.yaml").write_text("\n".join(lines) + "\n")
        target = str(tmp_path / "p.yaml")
    child = subprocess.run([sys.executable, "-m", "kvmkit", "plan", "evaluate", target], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 2, child.stderr
    assert len(child.stderr.strip().splitlines()) == 1 and "Traceback" not in child.stderr


@pytest.mark.parametrize("months", ["0", "99999", "-3"])
def test_a_lifetime_out_of_range_is_one_line_not_an_overflow(months):
    child = subprocess.run([sys.executable, "-m", "kvmkit", "plan", "evaluate", str(EXAMPLE), "--months", months],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 2, child.stderr
    assert len(child.stderr.strip().splitlines()) == 1 and "internal error" not in child.stderr
