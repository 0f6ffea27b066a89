"""The configuration space: every way to fill each chassis from the catalog, as integer index arrays.

A configuration is (chassis, CPU × n, DIMM × n, drive × n, lifetime). It *fits* when the CPU's socket and
TDP suit the chassis, the DIMMs are spread evenly over the populated sockets and use only their slots, the
installed RAM does not exceed the chassis' max RAM and the drives fit the bays. The space is stored as a
struct of small integer arrays (16 bytes per configuration) so a million of them cost 16 MB, and the loops
run over (chassis, CPU count) blocks only — a handful — never over configurations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvmkit.errors import InvalidInput
from kvmkit.plan.costmodel import NodeSpec
from kvmkit.plan.inputs import PlanInput, cpu_fits


@dataclass(frozen=True)
class ConfigSpace:
    chassis: np.ndarray  # index into plan.chassis
    cpu: np.ndarray
    n_cpu: np.ndarray
    dimm: np.ndarray
    n_dimm: np.ndarray
    drive: np.ndarray
    n_drive: np.ndarray
    months: np.ndarray  # lifetime in months

    def __len__(self) -> int:
        return int(self.chassis.shape[0])

    def spec(self, plan: PlanInput, i: int) -> NodeSpec:
        return NodeSpec(
            chassis=plan.chassis[int(self.chassis[i])], cpu=plan.cpus[int(self.cpu[i])], n_cpu=int(self.n_cpu[i]),
            dimm=plan.dimms[int(self.dimm[i])], n_dimm=int(self.n_dimm[i]),
            drive=plan.drives[int(self.drive[i])], n_drive=int(self.n_drive[i]),
        )  # fmt: skip

    def config_id(self, plan: PlanInput, i: int) -> str:
        return f"{self.spec(plan, i).id}/{int(self.months[i])}m"

    def take(self, rows: np.ndarray) -> ConfigSpace:
        return ConfigSpace(*(getattr(self, f)[rows] for f in _FIELDS))


MAX_CONFIGS = 5_000_000
MAX_MONTHS = 240  # as PlanInput's lifetimes_months; the arrays hold months as int16
_FIELDS = ("chassis", "cpu", "n_cpu", "dimm", "n_dimm", "drive", "n_drive", "months")
_DTYPES = (np.int16, np.int16, np.int8, np.int16, np.int16, np.int16, np.int16, np.int16)


def _product(*columns: np.ndarray) -> list[np.ndarray]:
    """Cartesian product of 1-D arrays, as one array per input (like itertools.product, column-wise)."""
    sizes = [len(c) for c in columns]
    grids = np.unravel_index(np.arange(int(np.prod(sizes)), dtype=np.int64), sizes)
    return [column[grid] for column, grid in zip(columns, grids, strict=True)]


def space_size(plan: PlanInput, months: list[int] | None = None) -> int:
    """An upper bound on the configurations enumerate_space would make, from counts alone (no arrays)."""
    bad = [m for m in months or [] if not 1 <= m <= MAX_MONTHS]
    if bad:
        raise InvalidInput(f"lifetime {bad[0]} months is outside 1..{MAX_MONTHS}")
    lifetimes = len(months or plan.site.lifetimes_months)
    total = 0
    for box in plan.chassis:
        cpus = sum(1 for cpu in plan.cpus if cpu_fits(box, cpu))
        drives = len(plan.drives) * box.drive_bays if box.drive_bays else 1
        dimm_options = sum(len(plan.dimms) * (box.dimm_slots * n // box.sockets // n)
                           for n in range(1, box.sockets + 1))
        total += cpus * dimm_options * drives * lifetimes
    return total


def enumerate_space(plan: PlanInput, months: list[int] | None = None) -> ConfigSpace:
    """Every configuration that fits, for every lifetime (default: the site's lifetimes); a catalog whose space
    exceeds MAX_CONFIGS is refused before anything is allocated (16 bytes each, and evaluation several times that)."""
    size = space_size(plan, months)
    if size > MAX_CONFIGS:
        raise InvalidInput(f"the plan's catalog spans up to {size:,} configurations (at most {MAX_CONFIGS:,}): "
                           "narrow it (fewer parts, drive bays or lifetimes)")
    lifetimes = np.asarray(months or plan.site.lifetimes_months, dtype=np.int16)
    dimm_gb = np.array([d.gb for d in plan.dimms])
    blocks: list[list[np.ndarray]] = []
    for c, box in enumerate(plan.chassis):
        cpus = np.array([i for i, cpu in enumerate(plan.cpus) if cpu_fits(box, cpu)], dtype=np.int16)
        if box.drive_bays:
            drive_idx, drive_n = _product(np.arange(len(plan.drives)), np.arange(1, box.drive_bays + 1))
        else:  # a diskless chassis: one "no drive" option rather than one per drive type
            drive_idx, drive_n = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        for n_cpu in range(1, box.sockets + 1):
            usable_slots = box.dimm_slots * n_cpu // box.sockets
            counts = np.arange(n_cpu, usable_slots + 1, n_cpu)
            dimm_idx, dimm_n = _product(np.arange(len(plan.dimms)), counts)
            fits_ram = dimm_n * dimm_gb[dimm_idx] <= box.max_ram_gb
            dimm_idx, dimm_n = dimm_idx[fits_ram], dimm_n[fits_ram]
            if not len(cpus) or not len(dimm_idx):
                continue
            cpu_i, memory_i, drive_i, life = _product(
                cpus, np.arange(len(dimm_idx)), np.arange(len(drive_idx)), lifetimes
            )
            size = len(cpu_i)
            blocks.append([
                np.full(size, c), cpu_i, np.full(size, n_cpu), dimm_idx[memory_i], dimm_n[memory_i],
                drive_idx[drive_i], drive_n[drive_i], life,
            ])  # fmt: skip
    if not blocks:
        return ConfigSpace(*(np.zeros(0, dtype=t) for t in _DTYPES))
    return ConfigSpace(*(np.concatenate([b[k] for b in blocks]).astype(t, copy=False) for k, t in enumerate(_DTYPES)))
