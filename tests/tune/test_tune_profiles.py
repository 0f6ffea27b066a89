"""Goal profiles: built-ins are complete and sourced; bad input is one clear InvalidInput."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmkit.errors import InvalidInput
from kvmkit.tune.profiles import Expect, load_all, load_profile

GOALS = ["balanced", "latency", "per-core", "per-watt", "throughput"]


def test_builtin_goals_are_the_five_of_the_issue():
    assert [p.name for p in load_all()] == GOALS


@pytest.mark.parametrize("goal", GOALS)
def test_every_rule_has_a_rationale_and_a_source(goal):
    profile = load_profile(goal)
    assert profile.rules
    for check_id, rule in profile.rules.items():
        assert len(rule.why) > 15, check_id
        assert len(rule.source) > 10, check_id


def test_goals_extend_balanced_and_override_it():
    balanced, latency = load_profile("balanced"), load_profile("latency")
    assert set(balanced.rules) < set(latency.rules)
    assert latency.rules["cpufreq_governor"].expect.equals == "performance"
    assert latency.rules["kvm_device"] == balanced.rules["kvm_device"]


def test_unknown_goal_lists_the_valid_ones():
    with pytest.raises(InvalidInput, match=r"unknown goal 'fast'; valid goals: balanced, latency, per-core"):
        load_profile("fast")


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


RULE = 'expect = {{ {expect} }}\nwhy = "a reason long enough"\nsource = "somewhere documented"\n'


def test_unknown_key_in_a_rule_is_named(tmp_path: Path):
    _write(
        tmp_path,
        "mine",
        'description = "d"\n[checks.swappiness]\n' + RULE.format(expect="max = 5") + "colour = 'red'\n",
    )
    with pytest.raises(InvalidInput, match=r"mine.toml: checks.swappiness.colour: Extra inputs"):
        load_profile("mine", [tmp_path])


def test_unknown_check_is_named(tmp_path: Path):
    _write(tmp_path, "mine", 'description = "d"\n[checks.swapiness]\n' + RULE.format(expect="max = 5"))
    with pytest.raises(InvalidInput, match=r"checks.swapiness: unknown check"):
        load_profile("mine", [tmp_path])


def test_two_expectation_kinds_are_rejected(tmp_path: Path):
    _write(tmp_path, "mine", 'description = "d"\n[checks.swappiness]\n' + RULE.format(expect="max = 5, equals = 3"))
    with pytest.raises(InvalidInput, match=r"checks.swappiness.expect: .*exactly one of"):
        load_profile("mine", [tmp_path])


def test_missing_source_is_named(tmp_path: Path):
    _write(tmp_path, "mine", 'description = "d"\n[checks.swappiness]\nexpect = { max = 5 }\nwhy = "because so"\n')
    with pytest.raises(InvalidInput, match=r"checks.swappiness.source: Field required"):
        load_profile("mine", [tmp_path])


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path):
    _write(tmp_path, "mine", "description = \n")
    with pytest.raises(InvalidInput, match=r"mine.toml: not valid TOML"):
        load_profile("mine", [tmp_path])


def test_extends_unknown_goal_lists_valid_goals(tmp_path: Path):
    _write(tmp_path, "mine", 'description = "d"\nextends = "fastest"\n')
    with pytest.raises(InvalidInput, match=r"extends: unknown goal 'fastest'; valid goals: balanced"):
        load_profile("mine", [tmp_path])


def test_extends_cycle_is_reported(tmp_path: Path):
    _write(tmp_path, "a", 'description = "d"\nextends = "b"\n')
    _write(tmp_path, "b", 'description = "d"\nextends = "a"\n')
    with pytest.raises(InvalidInput, match=r"cycle a → b → a"):
        load_profile("a", [tmp_path])


def test_missing_profile_dir_is_an_error(tmp_path: Path):
    with pytest.raises(InvalidInput, match=r"does not exist"):
        load_profile("latency", [tmp_path / "nope"])


def test_user_profile_extends_skips_and_overrides(tmp_path: Path):
    _write(
        tmp_path,
        "nfv",
        'description = "ours"\nextends = "latency"\nskip = ["tuned_profile"]\n'
        "[checks.swappiness]\n" + RULE.format(expect="max = 1"),
    )
    profile = load_profile("nfv", [tmp_path])
    assert "tuned_profile" not in profile.rules
    assert profile.rules["swappiness"].expect.max == 1
    assert profile.rules["nohz_full"] == load_profile("latency").rules["nohz_full"]
    assert "nfv" in [p.name for p in load_all([tmp_path])]


def test_goal_given_as_a_file_path(tmp_path: Path):
    path = _write(tmp_path, "edge", 'description = "d"\nextends = "per-watt"\n')
    assert load_profile(str(path)).rules == load_profile("per-watt").rules


@pytest.mark.parametrize(
    ("expect", "value", "ok"),
    [
        ({"equals": True}, True, True),
        ({"equals": True}, 1, False),  # booleans never match integers
        ({"equals": 0}, False, False),
        ({"one_of": ["none", "mq-deadline"]}, "bfq", False),
        ({"none_of": ["off"]}, None, True),
        ({"min": 100}, "100", False),  # text is not a number
        ({"max": 10}, None, False),
        ({"unset": True}, None, True),
        ({"unset": False}, "", True),  # a bare flag (nohz_full with no list) is set
        ({"unset": False}, None, False),
    ],
)
def test_expectation_edge_cases(expect, value, ok):
    assert Expect(**expect).matches(value) is ok


@given(st.integers(-1000, 1000), st.integers(-1000, 1000), st.integers(-2000, 2000))
def test_range_matches_exactly_the_closed_interval(low, high, value):
    expect = Expect(min=min(low, high), max=max(low, high))
    assert expect.matches(value) == (min(low, high) <= value <= max(low, high))


def test_default_target_comes_from_the_expectation():
    assert Expect(max=10).default_target() == 10
    assert Expect(one_of=["none", "mq-deadline"]).default_target() == "none"
    assert Expect(unset=True).default_target() is None


def test_misspelt_key_is_named_rather_than_the_missing_one(tmp_path: Path):
    _write(tmp_path, "mine", 'description = "d"\n[checks.swappiness]\nexpect = { max = 5 }\nwhy = "x"\nsoruce = "y"\n')
    with pytest.raises(InvalidInput, match=r"checks.swappiness.soruce: Extra inputs are not permitted"):
        load_profile("mine", [tmp_path])


def _kind(value) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, int | float) else "text"


@pytest.mark.parametrize("goal", GOALS)
def test_rules_compare_values_of_the_type_their_check_reads(goal, xeon_readings, dev_vm_readings):
    """A profile typo such as equals = "1" for an integer check would never match: catch it from the data."""
    for check_id, rule in load_profile(goal).rules.items():
        reading = xeon_readings[check_id] if xeon_readings[check_id].values else dev_vm_readings[check_id]
        kinds = {_kind(v) for v in reading.values.values() if v is not None}
        expect = rule.expect
        if expect.unset is not None or not kinds:
            continue
        if expect.min is not None or expect.max is not None:
            wanted = {"number"}
        else:
            wanted = {_kind(v) for v in (expect.one_of or expect.none_of or [expect.equals])}
        assert kinds == wanted, f"{goal}: {check_id} reads {kinds} but the rule compares {wanted}"
        if rule.target is not None:
            assert {_kind(rule.target)} == kinds, f"{goal}: {check_id} target {rule.target!r}"
