"""The one exception tree of kvmkit.

    KvmkitError                  anything kvmkit reports to a user (exit code 1)
     ├─ InvalidInput             bad arguments or configuration; nothing was changed (exit 2)
     ├─ NotFound                 an unknown VM, snapshot, backup, target … (exit 3)
     ├─ Conflict                 the object is busy, running, in use or already exists (exit 4)
     ├─ EnvironmentProblem       the host lacks something: root, a tool, a loop device, a free port (exit 5)
     └─ OperationFailed          a real operation failed part-way; the message says what was cleaned up (exit 6)

Edges (libvirt, librbd, subprocess) catch their own low-level errors and re-raise one of these with a
sentence an operator can act on, so the CLI prints one line and never a traceback (unless --debug).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class KvmkitError(Exception):
    exit_code = 1

    def rephrased(self, message: str) -> KvmkitError:
        """The same error (class, exit code and any fields a subclass keeps) with a new message: for adding what
        was cleaned up, without assuming every subclass is built from one string. Raise it `from` this one."""
        clone = type(self).__new__(type(self))  # not copy.copy: that calls __init__ with args alone
        clone.__dict__.update(self.__dict__)
        clone.args = (message,)
        return clone


class InvalidInput(KvmkitError):
    exit_code = 2


class NotFound(KvmkitError):
    exit_code = 3


class Conflict(KvmkitError):
    exit_code = 4


class EnvironmentProblem(KvmkitError):
    exit_code = 5


class OperationFailed(KvmkitError):
    exit_code = 6


def validated(model: type[Model], data: Any, source: object) -> Model:
    """`model` from parsed input, or InvalidInput naming the first wrong field (`config.toml: target.kind: …`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{source}: {where}: {first['msg']}") from None
