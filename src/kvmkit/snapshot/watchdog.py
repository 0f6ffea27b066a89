"""The thaw watchdog: a separate process that thaws (or resumes) the guest if kvmkit dies or overruns.

Protocol on its stdin/stdout (pipes held by the kvmkit process that started it):
  watchdog → "ready"            connected to libvirt, found the domain
  kvmkit   → "armed"            the freeze (or pause) starts now: the deadline clock runs
  kvmkit   → "done"             kvmkit thawed itself: exit quietly
  EOF on stdin                  kvmkit died (kill -9 included): thaw now
  deadline passed while armed   thaw now, and say "fired" so kvmkit discards the snapshot
It runs in its own session, so a signal to kvmkit's process group does not take it down too.
"""

from __future__ import annotations

import select
import sys
import time


def _act(dom, action: str) -> str:
    import libvirt

    deadline = time.monotonic() + 30
    while True:
        try:
            if action == "resume":
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()
            else:
                dom.fsThaw()
            return "ok"
        except libvirt.libvirtError as exc:
            if not dom.isActive():
                return "domain gone"
            if time.monotonic() > deadline:
                return f"failed: {exc.get_error_message()}"
            time.sleep(0.2)  # the agent may still be busy with the freeze this thaw must follow


def main(argv: list[str]) -> int:
    import libvirt

    uri, uuid, deadline_s, action = argv[0], argv[1], float(argv[2]), argv[3]
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(uri)
    dom = conn.lookupByUUIDString(uuid)
    print("ready", flush=True)
    armed_at: float | None = None
    while True:
        timeout = None if armed_at is None else max(0.0, armed_at + deadline_s - time.monotonic())
        readable, _, _ = select.select([sys.stdin], [], [], timeout)
        if not readable:
            result = _act(dom, action)
            print(f"fired deadline {result}", flush=True)
            print(f"kvmkit watchdog: {deadline_s:.1f} s deadline passed; {action}: {result}", file=sys.stderr)
            return 0
        line = sys.stdin.readline()
        if line == "":
            result = _act(dom, action)
            print(f"kvmkit watchdog: kvmkit went away; {action}: {result}", file=sys.stderr)
            return 0
        if line.strip() == "armed":
            armed_at = time.monotonic()
        elif line.strip() == "done":
            print("ok", flush=True)
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
