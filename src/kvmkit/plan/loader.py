"""Read a plan file (TOML or YAML) into a PlanInput; every problem becomes `file:line: key: message`.

This is the I/O edge of the plan: the only module that opens the input file. pydantic and the core
report a location as a key path; `KeyLines` maps that path back to a line of the file — exactly for YAML
(the parser keeps marks), by a small scan of table headers and `key =` lines for TOML.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kvmkit.errors import InvalidInput, NotFound
from kvmkit.inputfile import read_text_bounded
from kvmkit.plan.inputs import PlanInput, check_catalog
from kvmkit.plan.problems import Loc, PlanProblem, dotted

MAX_PLAN_BYTES = 4 << 20  # a catalog of thousands of parts is ~100 KB
MAX_YAML_NODES = 100_000  # anchors are fine for sharing a block; a "billion laughs" file is not
_TOML_HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]?\]\s*(#.*)?$")
_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


class KeyLines:
    """Line numbers (1-based) of key paths in the source text."""

    def __init__(self, lines: dict[Loc, int]) -> None:
        self._lines = lines

    def line(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest ancestor that has one."""
        for cut in range(len(loc), -1, -1):
            if (found := self._lines.get(tuple(loc[:cut]))) is not None:
                return found
        return None

    @classmethod
    def from_toml(cls, text: str) -> KeyLines:
        lines: dict[Loc, int] = {}
        counters: dict[tuple[str, ...], int] = {}
        table: Loc = ()
        for number, raw in enumerate(text.splitlines(), start=1):
            if header := _TOML_HEADER.match(raw):
                path = tuple(part.strip().strip("\"'") for part in header.group(2).split("."))
                if header.group(1):  # [[array.of.tables]]
                    index = counters.get(path, -1) + 1
                    counters[path] = index
                    table = (*path, index)
                else:
                    table = path
                lines.setdefault(table, number)
                lines.setdefault(table[:1], number)
            elif key := _TOML_KEY.match(raw):
                lines.setdefault((*table, key.group(1)), number)
        return cls(lines)

    @classmethod
    def from_yaml(cls, text: str) -> KeyLines:
        lines: dict[Loc, int] = {}

        def walk(node: yaml.Node, path: Loc) -> None:
            lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    lines[(*path, key.value)] = key.start_mark.line + 1
                    walk(value, (*path, key.value))
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    walk(item, (*path, index))

        root = yaml.compose(text)
        if root is not None:
            walk(root, ())
        return cls(lines)


def _parse(path: Path, text: str) -> tuple[dict[str, Any], KeyLines]:
    if path.suffix.lower() in {".yaml", ".yml"}:
        try:
            data = _safe_yaml(path, text)
        except RecursionError:
            raise InvalidInput(f"{path}: not valid YAML: nested too deeply") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise InvalidInput(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"{path}: expected a mapping at the top level")
        return data, KeyLines.from_yaml(text)
    try:
        return tomllib.loads(text), KeyLines.from_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{path}: not valid TOML: nested too deeply") from None


def _safe_yaml(path: Path, text: str) -> Any:
    """yaml.safe_load, refusing a document whose aliases expand to more than MAX_YAML_NODES nodes (a
    "billion laughs" file is small but every later walk over it is exponential); counted on the composed graph
    with one memo per node, so the count itself costs only the file's size."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a cycle counts once here and is refused by the model later
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]
    if root is not None and (count := expanded(root)) > MAX_YAML_NODES:
        raise InvalidInput(f"{path}: YAML aliases expand to {count:,} values (at most {MAX_YAML_NODES:,})")
    return yaml.safe_load(text)


def _suggest(model: type[BaseModel], key: str) -> str:
    """For an unknown key, the field probably meant (e.g. `max_kw` -> `max_w`): units are separate fields."""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that owns the *parent* of `loc`, to suggest field names for unknown keys."""
    model: Any = PlanInput
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
        if model is None:
            return None
    return model


def locate(path: Path, keys: KeyLines, loc: Loc, message: str) -> InvalidInput:
    line = keys.line(loc)
    where = f"{path}:{line}" if line else str(path)
    return InvalidInput(f"{where}: {dotted(loc)}: {message}")


def _first_error(path: Path, keys: KeyLines, exc: ValidationError) -> InvalidInput:
    # An unknown key explains the "missing" error its typo causes (max_kw written for max_w): report it first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    loc = tuple(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        model = _model_at(loc)
        message = "unknown key" + (_suggest(model, str(loc[-1])) if model and loc else "")
    elif error["type"] == "missing":
        message = "required key is missing"
    elif "input" in error and not isinstance(error["input"], dict | list):
        message = f"{message} (got {repr(error['input'])[:200]})"
        if loc and str(loc[-1]).endswith("_kw") and error["type"] == "less_than_equal":
            message += "; this key is in kW, not W"
    return locate(path, keys, loc, message)


def read_cpu_ratio(advice_file: Path) -> float:
    """The CPU ratio from a `kvmkit congestion advise --json` file (keys tried in order, documented)."""
    try:
        advice = json.loads(read_text_bounded(advice_file, MAX_PLAN_BYTES, "congestion advice"))
    except NotFound as exc:
        raise InvalidInput(str(exc)) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"{advice_file}: cannot read congestion advice: {str(exc)[:200]}") from None
    for key in ("cpu_ratio", "recommended_cpu_ratio", "max_oversubscription"):
        value = advice.get(key) if isinstance(advice, dict) else None
        if isinstance(value, int | float) and value > 0:
            return float(value)
    raise InvalidInput(f"{advice_file}: no positive 'cpu_ratio' (or 'recommended_cpu_ratio') in congestion advice")


def load_plan(path: Path) -> PlanInput:
    """Read, validate and cross-check a plan file; raises InvalidInput naming file, line and key."""
    plan, _ = load_plan_with_lines(path)
    return plan


def load_plan_with_lines(path: Path) -> tuple[PlanInput, KeyLines]:
    try:
        text = read_text_bounded(path, MAX_PLAN_BYTES, "plan file")
    except NotFound:
        raise InvalidInput(f"{path}: cannot read plan file: it does not exist") from None
    data, keys = _parse(path, text)
    try:
        plan = PlanInput.model_validate(data)
        check_catalog(plan)
    except ValidationError as exc:
        raise _first_error(path, keys, exc) from None
    except PlanProblem as exc:
        raise locate(path, keys, exc.loc, exc.message) from None
    if plan.policy.cpu_ratio_from:
        ratio = read_cpu_ratio(path.parent / plan.policy.cpu_ratio_from)
        plan = plan.model_copy(update={"policy": plan.policy.model_copy(update={"cpu_ratio": ratio})})
    return plan, keys
