"""Garbage collection any host may run while any host backs up (docs/backup.md, "One repository, many hosts").

A chunk is swept only when all of these hold:
  1. no manifest names it (nor names a delta based on it), in a live set read from an unchanging manifest
     listing (read again until two listings around the read agree: a prune rebasing a child on another host
     moves chunk references between manifests, never adds one);
  2. its modification time (the storage's clock) is older than the cutoff: the GC's start minus `margin`,
     or the start of the oldest live writer lease (leases.py) if that is older. A backup writes its lease before
     touching any chunk, and touches every existing chunk it reuses, so whatever a running backup wrote or
     relies on is newer than the cutoff;
  3. read again just before its removal, it is still that old (a writer may have touched it since the listing).
The re-check and the removal of one chunk are one step; a writer checks the chunks it reused SETTLE seconds
after its last touch, before its manifest, so a removal it could miss would need that step to take longer than
SETTLE: the sweep stops (and says so) if one ever takes half of it.
"""

from __future__ import annotations

import logging
import time

from kvmkit.backup import leases
from kvmkit.backup.store import SETTLE, ChunkStore, SweepBlocked, _is_json

log = logging.getLogger(__name__)
GC_MARGIN = 900.0  # seconds: no chunk younger than this is swept, leases or not (a writer of an older kvmkit)
SKEW = 2.0  # seconds: storage timestamps of one second's resolution (S3 LastModified)
ATTEMPTS = 5


def _manifest_listing(store: ChunkStore) -> dict[str, tuple[int, float]]:
    return {key: (size, mtime) for key, size, mtime in store._list_times("manifests/") if _is_json(key)}


def consistent_live_set(store: ChunkStore) -> set[str]:
    for _ in range(ATTEMPTS):
        before = _manifest_listing(store)
        live = store.live_chunks()
        if _manifest_listing(store) == before:
            return live
    raise SweepBlocked(f"backup target {store.name}: manifests kept changing while garbage collection read them; "
                       "nothing was swept (run it again)")


def collect(store: ChunkStore, margin: float | None = None) -> tuple[int, int]:
    """Sweep what no backup needs (the rules above); (chunks, bytes) removed. margin: the store's configured
    one (gc_margin_s), else GC_MARGIN."""
    if margin is None:
        margin = GC_MARGIN if store.gc_margin is None else store.gc_margin
    now = leases.storage_now(store)
    running = leases.live(store, now)
    cutoff = now - margin
    if running:
        cutoff = min(cutoff, min(lease.started for lease in running) - SKEW)
    live = consistent_live_set(store)
    removed = freed = 0
    for key, size, mtime in store._list_times("chunks/"):
        if key.rsplit("/", 1)[-1] in live or mtime >= cutoff:
            continue
        t0 = time.monotonic()
        again = store._mtime(key)
        if again is None or again >= cutoff:
            continue
        store._delete([key])
        removed, freed = removed + 1, freed + size
        if time.monotonic() - t0 > SETTLE / 2:
            log.warning("garbage collection stopped: one re-check and removal took %.1f s (a running backup's "
                        "final check waits %.0f s)", time.monotonic() - t0, SETTLE)
            break
    stale = leases.dead(store, now)
    for start in range(0, len(stale), 1000):
        store._delete(stale[start:start + 1000])
    return removed, freed
