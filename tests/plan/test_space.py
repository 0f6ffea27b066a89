"""Which configurations fit: counted by hand on a tiny catalog, and against a brute-force itertools walk."""

from __future__ import annotations

import itertools

from kvmkit.plan.inputs import Chassis, Cpu, Dimm, Drive, PlanInput, cpu_fits
from kvmkit.plan.space import enumerate_space
from tests.plan.conftest import hand_plan


def tiny_plan() -> PlanInput:
    base = hand_plan()
    return base.model_copy(update={
        "chassis": [Chassis(name="c", u=1, price=1, idle_w=1, max_w=2, sockets=2, cpu_socket="X",
                            max_cpu_tdp_w=250, dimm_slots=4, drive_bays=2, max_ram_gb=200)],
        "cpus": [Cpu(name="A", socket="X", cores=8, ghz=2, price=1, tdp_w=200),
                 Cpu(name="B-too-hot", socket="X", cores=8, ghz=2, price=1, tdp_w=300),
                 Cpu(name="C-other-socket", socket="Y", cores=8, ghz=2, price=1, tdp_w=100)],
        "dimms": [Dimm(name="32G", gb=32, price=1), Dimm(name="64G", gb=64, price=1)],
        "drives": [Drive(name="d", tb=1, iops=1, price=1)],
    })  # fmt: skip


def test_tiny_catalog_count_worked_by_hand():
    # Only CPU A fits (B's TDP 300 > 250, C's socket differs).
    # 1 CPU: 2 of 4 slots usable → 1 or 2 DIMMs: 32, 64, 64, 128 GB all ≤ 200 → 4 memory options
    # 2 CPUs: 2 or 4 DIMMs: 64, 128, 128 GB fit; 4 × 64 = 256 > 200 does not → 3 memory options
    # drives: 1 type × 1..2 → 2 options ; one lifetime → (4 + 3) × 2 = 14
    space = enumerate_space(tiny_plan())
    assert len(space) == 14
    assert set(space.cpu.tolist()) == {0}


def _brute_force(plan: PlanInput, months: list[int]) -> set[tuple]:
    found = set()
    for (c, box), (p, cpu), (m, dimm), (d, _drive), life in itertools.product(
        enumerate(plan.chassis), enumerate(plan.cpus), enumerate(plan.dimms), enumerate(plan.drives), months
    ):
        if not cpu_fits(box, cpu):
            continue
        for n_cpu in range(1, box.sockets + 1):
            for n_dimm in range(1, box.dimm_slots + 1):
                balanced = n_dimm % n_cpu == 0 and n_dimm <= box.dimm_slots * n_cpu // box.sockets
                if not balanced or n_dimm * dimm.gb > box.max_ram_gb:
                    continue
                for n_drive in range(1, box.drive_bays + 1):
                    found.add((c, p, n_cpu, m, n_dimm, d, n_drive, life))
    return found


def test_example_space_equals_a_brute_force_walk(example_plan):
    months = [36, 60]
    space = enumerate_space(example_plan, months)
    rows = set(
        zip(
            *(
                getattr(space, f).tolist()
                for f in ("chassis", "cpu", "n_cpu", "dimm", "n_dimm", "drive", "n_drive", "months")
            ),
            strict=True,
        )
    )
    assert len(rows) == len(space)  # no duplicates
    assert rows == _brute_force(example_plan, months)


def test_months_override_the_site_lifetimes(example_plan):
    assert set(enumerate_space(example_plan, [48]).months.tolist()) == {48}
    assert set(enumerate_space(example_plan).months.tolist()) == {36, 60}
