"""The shared SLO core, pure parts and the policy file reader: class matching, who may be taken from, and one-line
refusals of files that are not policies (for both capabilities' policy models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from kvmkit.congestion.policy import Policy
from kvmkit.errors import InvalidInput
from kvmkit.memory.policy import MemPolicy
from kvmkit.slo.journal import Journal, apply, revert
from kvmkit.slo.policy import Action, ClassPolicy, Standing, load, neighbours_below


class Knob(BaseModel):
    priority: int
    domains: list[str]


class KnobPolicy(ClassPolicy):
    classes: dict[str, Knob] = Field(min_length=1)


class Row(Standing):
    violated: bool


def test_the_first_class_in_file_order_whose_glob_matches_wins():
    policy = KnobPolicy(classes={"db": Knob(priority=3, domains=["db-*"]), "all": Knob(priority=1, domains=["*"])})
    assert policy.class_of("db-1") == "db" and policy.class_of("web") == "all"
    assert KnobPolicy(classes={"db": Knob(priority=3, domains=["db-*"])}).class_of("web") is None


def test_only_running_vms_of_lower_classes_that_keep_their_own_slo_are_neighbours():
    classes = {"gold": Knob(priority=3, domains=["g*"]), "bronze": Knob(priority=1, domains=["*"])}
    rows = [Row(domain="g1", vm_class="gold", samples=1, violated=True),
            Row(domain="b-ok", vm_class="bronze", samples=1, violated=False),
            Row(domain="b-bad", vm_class="bronze", samples=1, violated=True),
            Row(domain="b-stopped", vm_class="bronze", samples=1, violated=False),
            Row(domain="x", vm_class=None, samples=1, violated=False)]  # fmt: skip
    running = {"g1": {}, "b-ok": {}, "b-bad": {}, "x": {}}
    assert [r.domain for r in neighbours_below(classes, rows, 3, running)] == ["b-ok"]
    assert neighbours_below(classes, rows, 1, running) == []  # nobody below the lowest class


@pytest.mark.parametrize("model", [Policy, MemPolicy])
def test_a_fifo_or_a_huge_file_is_refused_in_one_line_for_both_policies(tmp_path: Path, model: type[ClassPolicy]):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file"):
        load(fifo, model)  # returns at once: a FIFO with no writer would block a plain read forever
    huge = tmp_path / "huge.toml"
    huge.write_text("#" * (2 << 20))
    with pytest.raises(InvalidInput, match="at most"):
        load(huge, model)


class Params:
    def __init__(self) -> None:
        self.params = {"vm": {"quota": 5}}

    def domains(self) -> list[str]:
        return ["vm"]

    def parameters(self, domain: str) -> dict[str, int]:
        return dict(self.params[domain])

    def set_parameter(self, domain: str, param: str, value: int) -> None:
        self.params[domain][param] = value


def test_a_parameter_that_had_no_value_is_put_back_as_the_capabilitys_unset_value(tmp_path: Path):
    backend = Params()
    journal = Journal(tmp_path / "j.jsonl")
    apply([Action("vm", "cap", None, 50, "cap it")], backend, journal)
    assert [o.state for o in revert(backend, journal, dry_run=True)] == ["skipped"]  # no unset value known
    (undone,) = revert(backend, journal, unset={"cap": -1})
    assert undone.state == "reverted" and backend.params["vm"]["cap"] == -1


@pytest.mark.parametrize(
    "line",
    ['{"time": 1, "state": "intent"}', '{"time": 1, "id": "a", "state": "done", "new": "x"}', "[1, 2]",
     '{"time": 1, "id": "a", "state": "intent", "domain": "vm", "param": "cap", "new": 5, "rm": "-rf"}'],
)  # fmt: skip
def test_a_tampered_journal_is_refused_in_one_line_and_nothing_is_reverted(tmp_path: Path, line: str):
    backend = Params()
    journal = Journal(tmp_path / "j.jsonl")
    apply([Action("vm", "quota", 5, 50, "cap it")], backend, journal)
    with journal.path.open("a") as f:
        f.write(line + "\n")
    with pytest.raises(InvalidInput, match=r"j\.jsonl:3: not a journal line") as raised:
        revert(backend, journal)
    assert "\n" not in str(raised.value) and backend.params["vm"]["quota"] == 50


def test_an_intent_without_its_fields_is_not_a_journal_line(tmp_path: Path):
    journal = Journal(tmp_path / "j.jsonl")
    journal.write({"id": "a", "state": "intent", "param": "quota", "old": 1, "new": 2, "reason": "r"})
    journal.write({"id": "a", "state": "done", "detail": ""})
    with pytest.raises(InvalidInput, match=r"j\.jsonl:1: not a journal line"):
        journal.applied()
