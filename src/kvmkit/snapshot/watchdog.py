"""The thaw watchdog: a separate process that thaws (or resumes) the guest if kvmkit dies or overruns.

Protocol on its stdin/stdout (pipes held by the kvmkit process that started it):
  watchdog → "ready"            connected to libvirt, found the domain
  kvmkit   → "armed"            the freeze (or pause) starts now: the deadline clock runs
  kvmkit   → "done"             kvmkit thawed itself: exit quietly
  kvmkit   → "guard"            kvmkit thawed itself, but disks are on overlays until it commits them back: stay
  kvmkit   → "released"         (after "guard") the overlays are merged: exit quietly
  EOF on stdin                  kvmkit died (kill -9 included): thaw now; if guarding, also run `recover` on the
                                catalog kvmkit named, so the VM does not sit on an overlay (migration refused)
                                until the next kvmkit command
  deadline passed while armed   thaw now, and say "fired" so kvmkit discards the snapshot
It runs in its own session, so a signal to kvmkit's process group does not take it down too.
"""

from __future__ import annotations

import select
import sys
import time


def main(argv: list[str]) -> int:
    from kvmkit.virt.agent import thaw_or_resume
    from kvmkit.virt.connection import lookup_uuid, open_connection

    uri, uuid, deadline_s, action = argv[0], argv[1], float(argv[2]), argv[3]
    state_dir, catalog = (argv[4], argv[5]) if len(argv) >= 6 else (None, None)
    conn = open_connection(uri)
    dom = lookup_uuid(conn, uuid)
    if dom is None:
        print(f"kvmkit watchdog: no domain {uuid}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    armed_at: float | None = None
    guarding = False
    while True:
        timeout = None if armed_at is None else max(0.0, armed_at + deadline_s - time.monotonic())
        readable, _, _ = select.select([sys.stdin], [], [], timeout)
        if not readable:
            result = thaw_or_resume(dom, action)
            print(f"fired deadline {result}", flush=True)
            print(f"kvmkit watchdog: {deadline_s:.1f} s deadline passed; {action}: {result}", file=sys.stderr)
            return 0
        line = sys.stdin.readline()
        if line == "":
            if not guarding:
                result = thaw_or_resume(dom, action)
                print(f"kvmkit watchdog: kvmkit went away; {action}: {result}", file=sys.stderr)
            elif state_dir and catalog:
                done = _recover(uri, state_dir, catalog)
                print(f"kvmkit watchdog: kvmkit went away with overlays on top; recover: {done}", file=sys.stderr)
            return 0
        word = line.strip()
        if word == "armed":
            armed_at = time.monotonic()
        elif word == "done" or word == "released":
            print("ok", flush=True)
            return 0
        elif word == "guard":
            armed_at, guarding = None, True
            print("ok", flush=True)


def _recover(uri: str, state_dir: str, catalog: str) -> str:
    """The cheap recover pass kvmkit runs before every snapshot command, run now: it merges the overlays back."""
    from pathlib import Path

    from kvmkit import config
    from kvmkit.snapshot.catalog import Catalog
    from kvmkit.snapshot.context import SnapshotContext
    from kvmkit.snapshot.drivers.registry import default_drivers
    from kvmkit.snapshot.recover import recover

    try:
        settings = config.load()  # the environment kvmkit ran with: its Ceph settings for the drivers
        ctx = SnapshotContext(uri=uri, state_dir=Path(state_dir), catalog=Catalog(Path(catalog)),
                              drivers=default_drivers(settings, libvirt_uri=uri),
                              new_drivers=lambda: default_drivers(settings, libvirt_uri=uri))
        actions = recover(ctx)
    except Exception as exc:  # reported in the log; the next kvmkit command runs the same pass
        return f"failed: {exc}"
    return "; ".join(f"{a.action} ({a.detail})" for a in actions) or "nothing to do"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
