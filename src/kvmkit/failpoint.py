"""Fault injection for the crash tests, set by the environment (the idea of etcd's gofail).

`KVMKIT_FAILPOINT=<step>` kills this process with SIGKILL at the named step; `<step>=hang` makes it hang there
instead, announcing itself on stderr so a test can kill it at exactly that point. Unset, it costs one getenv.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def failpoint(step: str) -> None:
    wanted, _, action = os.environ.get("KVMKIT_FAILPOINT", "").partition("=")
    if wanted == step:
        if action == "hang":
            print(f"kvmkit: failpoint {step}: hanging", file=sys.stderr, flush=True)  # tests wait for this line
            time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)
