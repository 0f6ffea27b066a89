"""The records of `kvmkit tune`: readings, findings, reports. The same objects `--json` prints."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

# One observed value. None means "not set" (e.g. a kernel parameter absent from the command line).
Scalar = str | int | float | bool | None
HOST = ""  # the instance name of a host-wide value (as opposed to one per CPU or per disk)


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    UNKNOWN = "UNKNOWN"
    NA = "N/A"  # the profile's `only_if` does not hold on this host (e.g. numa_balancing on one node)


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Reading(BaseModel):
    """What one check saw. `values` maps an instance (cpu0, vda, or HOST) to its value; `sources` maps the
    instance to the file it came from, which is also where a runtime fix writes."""

    model_config = ConfigDict(frozen=True)
    check: str
    values: dict[str, Scalar] = {}
    sources: dict[str, str] = {}
    detail: str = ""
    facts: dict[str, Scalar] = {}  # context a fix needs (e.g. MiB to reserve); never judged
    unknown: str | None = None  # the reason, when the value could not be read

    def display(self) -> str:
        """The value as one short cell: the common value, or each distinct value with its instances."""
        if self.unknown is not None:
            return "?"
        if not self.values:
            return "-"
        groups: dict[str, list[str]] = {}
        for instance, value in self.values.items():
            groups.setdefault(format_value(value), []).append(instance)
        if len(groups) == 1:
            return next(iter(groups))
        if len(self.values) > 4:  # many instances (CPUs, vulnerabilities): counts read better than names
            return ", ".join(f"{text}×{len(instances)}" for text, instances in groups.items())
        return "; ".join(f"{text} ({','.join(instances)})" for text, instances in groups.items())


def format_value(value: Scalar) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class Remedy(BaseModel):
    """One way to fix a finding. kind: runtime (apply can do it), manual (a command apply will not run
    because it is disruptive), persistent (survives reboot), bios (only in firmware setup)."""

    model_config = ConfigDict(frozen=True)
    kind: str
    text: str


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)
    check: str
    title: str
    status: Status
    severity: Severity
    current: str
    expected: str
    why: str
    source: str
    detail: str = ""
    bad_instances: list[str] = []
    fixes: list[Remedy] = []


class AuditReport(BaseModel):
    model_config = ConfigDict(frozen=True)
    goal: str
    host: str
    origin: str  # "live" or the capture file
    score: int  # 0..100 over the checks that could be judged
    scores: dict[str, int]  # every known goal's score on the same readings
    counts: dict[str, int]
    findings: list[Finding]
    readings: list[Reading]

    @property
    def failed(self) -> bool:
        return self.counts.get(Status.FAIL.value, 0) > 0
