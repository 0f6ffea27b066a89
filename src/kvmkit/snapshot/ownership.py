"""Whose is a snapshot on the storage? Every object kvmkit makes carries the id of the catalog that made it
(drivers with the `Ownership` capability mark it), so two catalogs on one host — a second install, a test run, a
cron job with its own KVMKIT_STATE_DIR — never take each other's snapshots for orphans.

  ours      marked with this catalog's id: this catalog may delete it when its own rows say so
  foreign   marked with another catalog's id: never deleted, only reported (or taken over with --adopt)
  unknown   not marked (made before ownership existed, by hand, or by a driver without the capability):
            deleted only when one of this catalog's rows names it, else reported (--purge-foreign deletes it)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvmkit.snapshot.drivers.base import Ownership, StorageDriver
from kvmkit.snapshot.model import DiskSnapshot

Whose = Literal["ours", "foreign", "unknown"]


@dataclass(frozen=True)
class Verdict:
    whose: Whose
    owner: str | None  # the catalog id found on the object, if any


def whose(driver: StorageDriver, snap: DiskSnapshot, catalog_id: str) -> Verdict:
    owner = driver.owner_of(snap) if isinstance(driver, Ownership) else None
    if owner is None:
        return Verdict("unknown", None)
    return Verdict("ours" if owner == catalog_id else "foreign", owner)
