"""Whatever a host's files contain, reading and judging it never raises: garbage becomes UNKNOWN with a reason."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmkit.errors import InvalidInput
from kvmkit.tune.capture import extract, view_of
from kvmkit.tune.checks import CHECKS, read_all
from kvmkit.tune.evaluate import evaluate
from kvmkit.tune.profiles import load_all

XEON = Path(__file__).parent / "fixtures" / "synthetic-xeon-2s.tar.gz"
with tempfile.TemporaryDirectory() as _listing:  # the file list is needed at import time, for the strategy
    _unpacked = extract(XEON, Path(_listing))
    # the host's files and probe outputs; meta.json/errors.json are the capture's own records (tested below)
    _FILES = sorted(p.relative_to(_unpacked) for p in _unpacked.rglob("*") if p.is_file() and p.parent != _unpacked)
_PROFILES = load_all()

garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\n", b"-1", b"99999999999999999999", b"[", b"]", b"[]", b"<domain>", b"\xff\xfe"]),
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One unpacked capture for all examples; each example puts back the files it corrupted."""
    return extract(XEON, tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=60, deadline=None)
@given(corruptions=st.lists(st.tuples(st.sampled_from(_FILES), garbage), min_size=1, max_size=8))
def test_garbage_in_any_file_never_raises(tree: Path, corruptions):
    originals = {relative: (tree / relative).read_bytes() for relative, _ in corruptions}
    try:
        for relative, content in corruptions:
            (tree / relative).write_bytes(content)
        readings = read_all(view_of(tree))
    finally:
        for relative, content in originals.items():
            (tree / relative).write_bytes(content)
    assert [r.check for r in readings] == [c.id for c in CHECKS]
    for reading in readings:
        assert bool(reading.unknown) != bool(reading.values), reading
    for profile in _PROFILES:
        assert len(evaluate(profile, readings)) == len(profile.rules)


def test_malformed_errors_json_is_invalid_input(tmp_path):
    folder = extract(XEON, tmp_path)
    (folder / "errors.json").write_text("1")
    with pytest.raises(InvalidInput, match=r"errors\.json: expected a map"):
        view_of(folder)
