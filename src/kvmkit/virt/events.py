"""libvirt's default event loop, run once per process in a daemon thread, so block jobs are awaited on events.

libvirt only delivers events on connections opened after the loop is registered, so `connection.open_connection`
calls `ensure_loop()` first.
"""

from __future__ import annotations

import threading

import libvirt

_lock = threading.Lock()
_started = False


def ensure_loop() -> None:
    global _started
    with _lock:
        if _started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _started = True
