"""FakeWatchdog and FakeGuestAgent: in-process stand-ins for the thaw watchdog process and qemu-guest-agent.

libvirt's `test:///default` driver has fsFreeze/fsThaw but no guest agent channel (qemuAgentCommand is a QEMU-only
call), and the real watchdog is a separate process that would open its own test:///default with other domains.
These doubles record what the engine asked of them and can be told to fail at one step.
"""

from __future__ import annotations

from pathlib import Path

from kvmkit.errors import EnvironmentProblem, KvmkitError, OperationFailed


class FakeWatchdog:
    def __init__(self, uri: str, vm_uuid: str, deadline_s: float, action: str, log: Path,
                 recover_with: tuple[Path, Path] | None = None, *, fire: bool = False,
                 fail_arm: bool = False) -> None:
        self.deadline_s, self.action, self.events = deadline_s, action, ["started"]
        self._fire, self._fail_arm = fire, fail_arm

    def wait_ready(self) -> None:
        if self._fail_arm:
            self.events.append("failed to arm")
            raise OperationFailed("the thaw watchdog did not start (fake); nothing was frozen")

    def arm(self) -> None:
        if self._fail_arm:
            self.events.append("failed to arm")
            raise OperationFailed("the thaw watchdog did not start (fake); nothing was frozen")
        self.events.append("armed")

    def cancel(self) -> None:
        self.events.append("cancelled")

    def abandon(self) -> None:
        self.events.append("abandoned")

    def disarm(self, guard: bool = False) -> bool:
        self.events.append("fired" if self._fire else ("guarding" if guard else "disarmed"))
        return not self._fire

    def release(self) -> None:
        self.events.append("released")


class FakeWatchdogFactory:
    """Makes FakeWatchdogs and keeps them, so a test can see what each operation did with its watchdog."""

    def __init__(self, *, fire: bool = False, fail_arm: bool = False) -> None:
        self.made: list[FakeWatchdog] = []
        self.fire, self.fail_arm = fire, fail_arm

    def __call__(self, uri: str, vm_uuid: str, deadline_s: float, action: str, log: Path,
                 recover_with: tuple[Path, Path] | None = None) -> FakeWatchdog:
        dog = FakeWatchdog(uri, vm_uuid, deadline_s, action, log, recover_with, fire=self.fire,
                           fail_arm=self.fail_arm)
        self.made.append(dog)
        return dog


class FakeGuestAgent:
    """Answers pings (unless `answers` is False) and freezes through libvirt's fsFreeze/fsThaw, which the test
    driver implements; `fail_freeze`/`fail_thaw` make the next call raise as a real agent error would."""

    def __init__(self, answers: bool = True) -> None:
        self.answers = answers
        self.frozen = False
        self.calls: list[str] = []
        self.fail_freeze: KvmkitError | None = None
        self.fail_thaw: KvmkitError | None = None

    def ping(self, dom, timeout_s: int = 2) -> bool:
        self.calls.append("ping")
        return self.answers

    def freeze(self, dom) -> int:
        self.calls.append("freeze")
        if self.fail_freeze is not None:
            error, self.fail_freeze = self.fail_freeze, None
            raise error
        if not self.answers:
            raise EnvironmentProblem("guest agent not answering (fake)")
        self.frozen = True
        return dom.fsFreeze()

    def thaw(self, dom) -> int:
        self.calls.append("thaw")
        if self.fail_thaw is not None:
            error, self.fail_thaw = self.fail_thaw, None
            raise error
        self.frozen = False
        return dom.fsThaw()

    def freeze_status(self, dom) -> str:
        self.calls.append("status")
        if not self.answers:
            raise EnvironmentProblem("guest agent not answering (fake)")
        return "frozen" if self.frozen else "thawed"
