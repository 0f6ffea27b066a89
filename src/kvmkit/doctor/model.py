"""Doctor records: one Finding per check and subject, the same objects `kvmkit doctor --json` prints."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class Severity(StrEnum):
    OK = "ok"
    INFO = "info"  # a choice worth knowing (the extent limit), never a problem
    WARN = "warn"  # works, but degraded or risky: exit code stays 0
    FAIL = "fail"  # a capability will not work on this host: exit code 1


class Finding(BaseModel):
    check: str  # libvirt, agent, fsfreeze, reflink, extent-limit, rbd, backup-target, state-dir, clock
    subject: str  # what was checked: a URI, a VM, a folder, a cluster, a target
    severity: Severity
    message: str
    fix: str = ""  # what to do about it (empty when nothing needs doing)


class Report(BaseModel):
    findings: list[Finding]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(f.severity is Severity.FAIL for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0
