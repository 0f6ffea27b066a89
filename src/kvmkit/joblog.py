"""Per-job operation logs, as vzdump keeps them: one file per operation on one VM, under the state dir.

`<state_dir>/log/<kind>/<vm>/<YYYYmmdd-HHMMSS>-<pid>.log` (0600, in 0700 folders) holds every kvmkit log record
of that job at INFO and above, with its structured fields (`vm=… snapshot=… froze_ms=…`), then one last line:
`job ok` or `job failed: <the error>`. When a cron run or a service unit reports a failure, the operator reads
what that one job did without searching a shared log. The newest KEEP files per VM and kind are kept.

Several VMs' jobs may run at once in threads (`snapshot create a b c`): a job's file takes the records that name
its VM, and the unnamed records of the thread that runs it (and of the workers it starts, which inherit nothing:
their records name the VM where it matters).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from kvmkit import fsat

KEEP = 30
KINDS = ("snapshot", "backup", "restore", "revert", "delete")
_NAME = re.compile(r"^\d{8}-\d{6}-\d+(-\d+)?\.log$")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_level_lock = threading.Lock()


class _Formatter(logging.Formatter):
    """Time, level, logger and message, then the record's structured fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        return line + "".join(f" {k}={v}" for k, v in fields.items())


class _JobFilter(logging.Filter):
    def __init__(self, vm: str, thread: int) -> None:
        super().__init__()
        self.vm, self.thread = vm, thread

    def filter(self, record: logging.LogRecord) -> bool:
        named = getattr(record, "vm", None)
        return named == self.vm if named is not None else record.thread == self.thread


def folder(state_dir: Path, kind: str, vm: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"job kind {kind!r}")
    if "/" in vm or vm in ("", ".", ".."):
        raise ValueError(f"VM name {vm!r}")
    return state_dir / "log" / kind / vm


@contextmanager
def job_log(state_dir: Path, kind: str, vm: str, what: str) -> Iterator[Path]:
    """Log the job to its own file while the context runs; `what` is its first line (the command, in words).
    A failure to make the file never stops the job: it then runs unlogged, as before."""
    try:
        path = _open(folder(state_dir, kind, vm))
    except ValueError:  # not a name kvmkit accepts: the job itself refuses it in its own words
        yield Path(os.devnull)
        return
    except OSError as exc:
        logging.getLogger(__name__).warning("no job log for %s %s: %s", kind, vm, exc)
        yield Path(os.devnull)
        return
    stream = path.open("a", encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_JobFilter(vm, threading.get_ident()))
    logger = logging.getLogger("kvmkit")
    restore_level = _let_info_through(logger)
    logger.addHandler(handler)
    log = logging.getLogger("kvmkit.job")  # the job's own first and last lines: for its file, not the console
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    log.info("job %s: %s", kind, what, extra={"vm": vm})
    try:
        yield path
    except BaseException as exc:
        log.error("job failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__, extra={"vm": vm})
        raise
    else:
        log.info("job ok", extra={"vm": vm})
    finally:
        logger.removeHandler(handler)
        log.removeHandler(handler)
        restore_level()
        stream.close()
        _rotate(path.parent)


def _open(where: Path) -> Path:
    fsat.private_dirs(where)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for attempt in range(100):  # two jobs of one VM in one second from one process: a numbered name
        path = where / (name if attempt == 0 else name.replace(".log", f"-{attempt}.log"))
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            return path
        except FileExistsError:
            continue
    raise OSError(f"no free log name in {where}")


_active = 0  # jobs logging now (threads): the first one lowers kvmkit's level, the last one puts it back
_saved_level = logging.NOTSET


def _let_info_through(logger: logging.Logger) -> Callable[[], None]:
    """kvmkit's logger must pass INFO to the job's handler, while the console keeps its own level: the root
    handlers (the CLI's stderr) get the root's level as their own. Returns how to undo it."""
    global _active, _saved_level
    with _level_lock:
        root = logging.getLogger()
        for handler in root.handlers:
            if handler.level == logging.NOTSET:
                handler.setLevel(root.level)
        if _active == 0:
            _saved_level = logger.level
        _active += 1
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def undo() -> None:
        global _active
        with _level_lock:
            _active -= 1
            if _active == 0:
                logger.setLevel(_saved_level)
    return undo


def _rotate(where: Path, keep: int = KEEP) -> None:
    """Keep the newest `keep` job logs of this VM and kind (by name: the names sort by time)."""
    with suppress(OSError):
        logs = sorted(p for p in where.iterdir() if _NAME.match(p.name))
        for old in logs[:-keep]:
            with suppress(OSError):
                old.unlink()


def recent(state_dir: Path, kind: str, vm: str, count: int = 1) -> list[Path]:
    """The newest job logs of a VM and kind, newest last."""
    where = folder(state_dir, kind, vm)
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir() if _NAME.match(p.name))[-count:]
