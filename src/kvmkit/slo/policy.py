"""What congestion's and memory's SLO policies share. Pure: no libvirt, no clock, no files except `load` (which
only parses a bounded regular file).

A policy file is TOML with a judging window, a percentile and `[classes.NAME]` tables; each class has a
`priority` (higher is more important) and `domains` globs. Classes are matched in file order; the first whose
glob matches a domain name wins.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kvmkit.errors import InvalidInput, NotFound, validated
from kvmkit.inputfile import read_text_bounded

MAX_POLICY_BYTES = 1 << 20
PolicyT = TypeVar("PolicyT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Action:
    """Set one live parameter of one domain; `old` is what revert puts back (None: was unset)."""

    domain: str
    param: str
    old: int | None
    new: int
    reason: str


class SloClass(Protocol):
    @property
    def priority(self) -> int: ...
    @property
    def domains(self) -> list[str]: ...


class Standing(BaseModel):
    """One VM judged against its class over the window: what every capability's standing starts with (its own
    figures, the SLO and `violated` follow in the subclass, in the order `--json` prints them)."""

    domain: str
    vm_class: str | None
    samples: int
    if TYPE_CHECKING:
        violated: bool


StandingT = TypeVar("StandingT", bound=Standing)


class ClassPolicy(BaseModel):
    """What every policy file has: the judging window and percentile, and classes matched by domain globs.

    Each capability's policy adds its own knobs and then `classes` (declared there, last, so that `policy --json`
    prints a policy's own knobs before its classes).
    """

    model_config = ConfigDict(extra="forbid")
    window_s: float = Field(default=600, gt=0)
    percentile: float = Field(default=95, gt=0, le=100)
    if TYPE_CHECKING:
        classes: Mapping[str, SloClass]

    def class_of(self, domain: str) -> str | None:
        """The first class (in file order) with a glob matching the domain's name."""
        return class_of(self.classes, domain)


def load(path: Path, model: type[PolicyT]) -> PolicyT:
    """The policy file parsed into `model`; a missing file is NotFound (exit 3, as every missing input file),
    every other problem one line of InvalidInput."""
    try:
        data = tomllib.loads(read_text_bounded(path, MAX_POLICY_BYTES, "policy file"))  # not /dev/zero, not a FIFO
    except (FileNotFoundError, NotFound):
        raise NotFound(f"policy file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"policy file {path}: unreadable: {exc}") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InvalidInput(f"{path}: not valid TOML: {str(exc) or 'nested too deeply'}") from None
    return validated(model, data, path)


def class_of(classes: Mapping[str, SloClass], domain: str) -> str | None:
    """The first class (in file order) with a glob matching the domain's name."""
    for name, vm_class in classes.items():
        if any(fnmatch.fnmatchcase(domain, pattern) for pattern in vm_class.domains):
            return name
    return None


def neighbours_below(
    classes: Mapping[str, SloClass], judged: Iterable[StandingT], priority: int, current: Mapping[str, object]
) -> list[StandingT]:
    """VMs a suffering VM of `priority` may take from: of a lower-priority class, keeping their own SLO, and
    running (in `current`, what libvirt reports now). Callers order them (noisiest, richest first)."""
    return [
        vm
        for vm in judged
        if vm.vm_class is not None
        and classes[vm.vm_class].priority < priority
        and not vm.violated
        and vm.domain in current
    ]

