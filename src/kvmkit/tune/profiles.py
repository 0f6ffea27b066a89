"""Goal profiles: what each check should read for a goal, as TOML data files, never as code branches.

A profile file (built-ins in kvmkit/tune/profiles/, users' in /etc/kvmkit/tune/profiles/ or --profile-dir):

    description = "..."
    extends = "balanced"            # optional: start from another profile's rules
    skip = ["tuned_profile"]        # optional: drop inherited rules
    [checks.swappiness]
    expect = { max = 10 }           # one of: equals, one_of, none_of, min/max, unset
    target = 10                     # optional: what `apply` writes (default: derived from expect)
    severity = "medium"             # low | medium | high
    level = "warn"                  # what a mismatch is: warn | fail
    why = "one line"
    source = "where the recommendation comes from"
    only_if = { check = "numa_nodes", expect = { min = 2 } }    # optional
    bios = "BIOS item to change"    # optional

A user file with a built-in's name replaces it. Bad files raise InvalidInput naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kvmkit.errors import InvalidInput
from kvmkit.inputfile import read_text_bounded
from kvmkit.tune.checks import CHECKS_BY_ID
from kvmkit.tune.model import Scalar, Severity, format_value

BUILTIN_DIR = Path(__file__).parent / "profiles"
USER_DIR = Path("/etc/kvmkit/tune/profiles")
Plain = str | int | float | bool


def _same(a: Scalar, b: Scalar) -> bool:
    """Equality that keeps booleans apart from 0/1, so `equals = true` never matches the integer 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _number(value: Scalar) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Expect(BaseModel):
    """One expectation on a value; exactly one kind (min and max together count as one range)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    equals: Plain | None = None
    one_of: list[Plain] | None = None
    none_of: list[Plain] | None = None
    min: float | None = None
    max: float | None = None
    unset: bool | None = None  # true: the parameter must be absent; false: it must be set

    @model_validator(mode="after")
    def _one_kind(self) -> Expect:
        kinds = [
            self.equals is not None,
            self.one_of is not None,
            self.none_of is not None,
            self.min is not None or self.max is not None,
            self.unset is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of equals, one_of, none_of, min/max, unset")
        return self

    def matches(self, value: Scalar) -> bool:
        if self.unset is not None:
            is_unset = value is None
            return is_unset if self.unset else not is_unset
        if self.equals is not None:
            return _same(value, self.equals)
        if self.one_of is not None:
            return any(_same(value, v) for v in self.one_of)
        if self.none_of is not None:
            return not any(_same(value, v) for v in self.none_of)
        number = _number(value)
        if number is None:
            return False
        return (self.min is None or number >= self.min) and (self.max is None or number <= self.max)

    def describe(self) -> str:
        if self.unset is not None:
            return "unset" if self.unset else "set"
        if self.equals is not None:
            return format_value(self.equals)
        if self.one_of is not None:
            return " or ".join(format_value(v) for v in self.one_of)
        if self.none_of is not None:
            return "not " + " / ".join(format_value(v) for v in self.none_of)
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        return f"≥ {self.min:g}" if self.min is not None else f"≤ {self.max:g}"

    def default_target(self) -> Scalar:
        """The value a fix proposes when the profile names no target."""
        if self.equals is not None:
            return self.equals
        if self.one_of:
            return self.one_of[0]
        if self.max is not None:
            return int(self.max) if float(self.max).is_integer() else self.max
        if self.min is not None:
            return int(self.min) if float(self.min).is_integer() else self.min
        return None


class OnlyIf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    check: str
    expect: Expect


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    expect: Expect
    target: Plain | None = None
    severity: Severity = Severity.MEDIUM
    level: Literal["warn", "fail"] = "warn"
    why: str = Field(min_length=1)
    source: str = Field(min_length=1)
    only_if: OnlyIf | None = None
    bios: str | None = None

    @property
    def effective_target(self) -> Scalar:
        return self.target if self.target is not None else self.expect.default_target()

    @property
    def candidates(self) -> list[Scalar]:
        """Acceptable values to write, preferred first (apply picks the first one the host offers)."""
        rest = [v for v in (self.expect.one_of or []) if not _same(v, self.effective_target)]
        return [self.effective_target, *rest]


class ProfileFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    extends: str | None = None
    skip: list[str] = []
    checks: dict[str, Rule] = {}


class Profile(BaseModel):
    """A resolved profile: inheritance applied, every check id known."""

    model_config = ConfigDict(frozen=True)
    name: str
    description: str
    path: str
    rules: dict[str, Rule]


def _parse_file(path: Path) -> ProfileFile:
    try:
        data = tomllib.loads(read_text_bounded(path, 1 << 20, "profile"))  # not /dev/zero, not a FIFO
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InvalidInput(f"profile {path}: not valid TOML: {str(exc) or 'nested too deeply'}") from None
    except OSError as exc:
        raise InvalidInput(f"profile {path}: cannot read: {exc.strerror}") from None
    try:
        parsed = ProfileFile.model_validate(data)
    except ValidationError as exc:
        # a misspelt key shows up twice (extra + missing): name the misspelling, it is the one to fix
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-after", "union")))
        raise InvalidInput(f"profile {path}: {where or 'file'}: {first['msg']}") from None
    for check_id, rule in parsed.checks.items():
        if check_id not in CHECKS_BY_ID:
            raise InvalidInput(f"profile {path}: checks.{check_id}: unknown check (see `kvmkit tune checks`)")
        if rule.only_if and rule.only_if.check not in CHECKS_BY_ID:
            raise InvalidInput(f"profile {path}: checks.{check_id}.only_if.check: unknown check {rule.only_if.check!r}")
    for check_id in parsed.skip:
        if check_id not in CHECKS_BY_ID:
            raise InvalidInput(f"profile {path}: skip: unknown check {check_id!r}")
    return parsed


def profile_files(extra_dirs: list[Path] | None = None) -> dict[str, Path]:
    """name → file; later folders override earlier ones (built-in, then /etc, then --profile-dir)."""
    files: dict[str, Path] = {}
    folders = [BUILTIN_DIR, USER_DIR, *(extra_dirs or [])]
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                files[path.stem] = path
        elif folder in (extra_dirs or []):
            raise InvalidInput(f"profile folder {folder} does not exist")
    return files


def _resolve(name: str, files: dict[str, Path], parsed: dict[str, ProfileFile], seen: tuple[str, ...]) -> Profile:
    if name in seen:
        raise InvalidInput(f"profile {files[name]}: extends: cycle {' → '.join((*seen, name))}")
    if name not in parsed:
        parsed[name] = _parse_file(files[name])
    own = parsed[name]
    rules: dict[str, Rule] = {}
    if own.extends is not None:
        if own.extends not in files:
            raise InvalidInput(
                f"profile {files[name]}: extends: unknown goal {own.extends!r}; valid goals: {', '.join(sorted(files))}"
            )
        rules.update(_resolve(own.extends, files, parsed, (*seen, name)).rules)
    for check_id in own.skip:
        rules.pop(check_id, None)
    rules.update(own.checks)
    return Profile(name=name, description=own.description, path=str(files[name]), rules=rules)


def load_profile(goal: str, extra_dirs: list[Path] | None = None) -> Profile:
    """The resolved profile for a goal name, or for a path to a .toml file (its `extends` may name goals)."""
    files = profile_files(extra_dirs)
    if goal.endswith(".toml"):
        path = Path(goal)
        try:
            path.stat()
        except OSError as exc:
            raise InvalidInput(f"profile file {path}: {exc.strerror}") from None
        files[path.stem] = path
        goal = path.stem
    if goal not in files:
        raise InvalidInput(f"unknown goal {goal!r}; valid goals: {', '.join(sorted(files))}")
    return _resolve(goal, files, {}, ())


def load_all(extra_dirs: list[Path] | None = None) -> list[Profile]:
    """Every known profile, resolved: used for the per-goal scores and `kvmkit tune profiles`."""
    files = profile_files(extra_dirs)
    parsed: dict[str, ProfileFile] = {}
    return [_resolve(name, files, parsed, ()) for name in sorted(files)]
