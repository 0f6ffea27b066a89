"""Pure evaluation: readings + a goal profile → findings and a score. No I/O; the tests feed it directly.

Score: each judged rule weighs 1/2/3 (low/medium/high severity); PASS earns its weight, WARN half, FAIL
nothing; UNKNOWN and N/A are left out of the denominator (they are reported, not guessed at).
"""

from __future__ import annotations

from kvmkit.tune.checks import CHECKS_BY_ID
from kvmkit.tune.fixes import remedies
from kvmkit.tune.model import AuditReport, Finding, Reading, Severity, Status
from kvmkit.tune.profiles import Profile, Rule

WEIGHT = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3}


def _condition_holds(rule: Rule, by_id: dict[str, Reading]) -> bool:
    """False only when the condition's check was read and no instance satisfies it."""
    if rule.only_if is None:
        return True
    other = by_id.get(rule.only_if.check)
    if other is None or other.unknown is not None:
        return True  # cannot tell: judge the rule rather than hide it
    return any(rule.only_if.expect.matches(v) for v in other.values.values())


def judge(check_id: str, rule: Rule, reading: Reading | None, by_id: dict[str, Reading]) -> Finding:
    """One rule against one reading."""
    check = CHECKS_BY_ID[check_id]
    expected = rule.expect.describe()
    base = dict(
        check=check_id,
        title=check.title,
        severity=rule.severity,
        expected=expected,
        why=rule.why,
        source=rule.source,
    )
    if reading is None:
        return Finding(**base, status=Status.UNKNOWN, current="?", detail="not read")
    if not _condition_holds(rule, by_id):
        cond = rule.only_if
        assert cond is not None
        shown = by_id[cond.check].display()
        return Finding(
            **base,
            status=Status.NA,
            current=reading.display(),
            detail=f"applies only when {cond.check} is {cond.expect.describe()} (it is {shown})",
        )
    if reading.unknown is not None:
        return Finding(**base, status=Status.UNKNOWN, current="?", detail=reading.unknown)
    bad = [instance for instance, value in reading.values.items() if not rule.expect.matches(value)]
    if not bad:
        return Finding(**base, status=Status.PASS, current=reading.display(), detail=reading.detail)
    status = Status.FAIL if rule.level == "fail" else Status.WARN
    return Finding(
        **base,
        status=status,
        current=reading.display(),
        detail=reading.detail,
        bad_instances=bad,
        fixes=remedies(reading, bad, rule.effective_target, rule.bios),
    )


def evaluate(profile: Profile, readings: list[Reading]) -> list[Finding]:
    """Findings in check order (the order of CHECKS), one per rule of the profile."""
    by_id = {r.check: r for r in readings}
    order = list(CHECKS_BY_ID)
    return [
        judge(check_id, profile.rules[check_id], by_id.get(check_id), by_id)
        for check_id in sorted(profile.rules, key=order.index)
    ]


def score(findings: list[Finding]) -> int:
    earned = possible = 0.0
    for finding in findings:
        if finding.status in (Status.UNKNOWN, Status.NA):
            continue
        weight = WEIGHT[finding.severity]
        possible += weight
        earned += {Status.PASS: weight, Status.WARN: weight / 2}.get(finding.status, 0)
    return round(100 * earned / possible) if possible else 0


def count(findings: list[Finding]) -> dict[str, int]:
    return {status.value: sum(1 for f in findings if f.status == status) for status in Status}


def audit(profile: Profile, readings: list[Reading], others: list[Profile], host: str, origin: str) -> AuditReport:
    """The full report for one goal, with every other goal's score on the same readings for comparison."""
    findings = evaluate(profile, readings)
    scores = {p.name: score(evaluate(p, readings)) for p in others}
    scores[profile.name] = score(findings)
    return AuditReport(
        goal=profile.name,
        host=host,
        origin=origin,
        score=scores[profile.name],
        scores=scores,
        counts=count(findings),
        findings=findings,
        readings=readings,
    )
