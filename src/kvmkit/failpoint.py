"""Fault injection for the crash tests, set by the environment (the idea of etcd's gofail).

`KVMKIT_FAILPOINT=<step>` kills this process with SIGKILL at the named step; `<step>=hang` makes it hang there
instead, announcing itself on stderr so a test can kill it at exactly that point. Unset, it costs one getenv.

A test hook must not be a production switch: an environment that leaks into a root cron job or a unit must not be
able to kill kvmkit between a freeze and its thaw. So the hook is honoured only when kvmkit runs from a source
checkout (its `src/` beside `tests/` and `pyproject.toml`), never from an installed wheel.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path


@functools.cache
def enabled() -> bool:
    checkout = Path(__file__).resolve().parents[2]  # src/kvmkit/failpoint.py → the checkout, in a source tree
    return (Path(__file__).resolve().parent.parent.name == "src" and (checkout / "pyproject.toml").is_file()
            and (checkout / "tests" / "conftest.py").is_file())


def failpoint(step: str) -> None:
    wanted, _, action = os.environ.get("KVMKIT_FAILPOINT", "").partition("=")
    if wanted == step and enabled():
        if action == "hang":
            print(f"kvmkit: failpoint {step}: hanging", file=sys.stderr, flush=True)  # tests wait for this line
            time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)
