"""The plan's input: site, building blocks, policy and demand, as strict pydantic models.

Every field name carries its unit (`idle_w`, `rack_power_limit_kw`, `price_per_kwh`) so that watts and
kilowatts can never be mixed up silently: a file that says `max_kw` where `max_w` is meant is an unknown
key, and the loader points at it. Cross-field checks that need the whole catalog (a chassis no CPU fits,
a duplicate name) live in `PlanInput`'s validator so the pure core can trust what it receives.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvmkit.plan.problems import PlanProblem

# Caps: beyond any real catalog, well below what would make the configuration space (a product of these) or a
# loop over bays exhaust memory; space.py also caps the product itself.
MAX_ITEMS = 1000  # chassis, CPUs, DIMMs, drives, licences, demand lines
MAX_BAYS = 256  # the densest storage servers have ~100 bays
MAX_SLOTS = 128  # DIMM slots
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Strict):
    """What the data centre charges, whatever hardware is bought."""

    electricity_price_per_kwh: float = Field(ge=0)
    pue: float = Field(default=1.5, ge=1.0, le=5.0)  # facility W per IT W: cooling and power distribution
    rack_monthly_cost: float = Field(ge=0)
    rack_usable_u: int = Field(default=42, gt=0)
    rack_power_limit_kw: float = Field(gt=0, le=200)  # no rack feed exceeds 200 kW: larger is W
    rack_network_cost: float = Field(default=0.0, ge=0)  # one-off per rack: switches, PDUs
    node_network_cost: float = Field(default=0.0, ge=0)  # one-off per node: ports, cables, NICs
    operations_cost_per_node_month: float = Field(default=0.0, ge=0)
    deployment_cost_per_node: float = Field(default=0.0, ge=0)  # one-off
    support_pct_per_year: float = Field(default=0.0, ge=0, le=100)  # of the hardware price
    lifetimes_months: list[Annotated[int, Field(gt=0, le=240)]] = Field(default_factory=lambda: [36, 60],
                                                                        min_length=1, max_length=24)


class Chassis(_Strict):
    """A server without CPUs, DIMMs and drives; its watts are the platform's own (board, fans, NICs)."""

    name: str
    u: int = Field(gt=0)
    price: float = Field(ge=0)
    idle_w: float = Field(ge=0)
    max_w: float = Field(ge=0)
    sockets: int = Field(gt=0, le=8)
    cpu_socket: str  # the CPU socket type, e.g. "SP5"; a CPU fits only a chassis with the same type
    max_cpu_tdp_w: float = Field(default=1000.0, gt=0)
    dimm_slots: int = Field(gt=0, le=MAX_SLOTS)
    drive_bays: int = Field(ge=0, le=MAX_BAYS)
    max_ram_gb: float = Field(gt=0)

    @model_validator(mode="after")
    def _idle_not_above_max(self) -> Chassis:
        if self.idle_w > self.max_w:
            raise ValueError(f"idle_w ({self.idle_w}) is above max_w ({self.max_w})")
        return self


class Cpu(_Strict):
    name: str
    socket: str
    cores: int = Field(gt=0)
    threads_per_core: int = Field(default=2, ge=1, le=8)
    ghz: float = Field(gt=0)
    price: float = Field(ge=0)
    tdp_w: float = Field(gt=0)
    idle_w: float = Field(default=0.0, ge=0)  # per socket at idle; the chassis idle_w often includes it

    @model_validator(mode="after")
    def _idle_not_above_tdp(self) -> Cpu:
        if self.idle_w > self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w}) is above tdp_w ({self.tdp_w})")
        return self


class Dimm(_Strict):
    name: str
    gb: float = Field(gt=0)
    price: float = Field(ge=0)
    w: float = Field(default=0.0, ge=0)  # per DIMM, drawn at idle and at load alike


class Drive(_Strict):
    name: str
    tb: float = Field(gt=0)
    iops: float = Field(ge=0)
    price: float = Field(ge=0)
    w: float = Field(default=0.0, ge=0)


class Licence(_Strict):
    """A software cost per node, per socket or per physical core; monthly, or perpetual (amortised)."""

    name: str
    per: Literal["node", "socket", "core"]
    price: float = Field(ge=0)  # per unit: per month when billing is monthly, one-off when perpetual
    billing: Literal["monthly", "perpetual"] = "monthly"
    min_cores_per_socket: int = Field(default=0, ge=0)  # per="core": each socket counts at least this many
    min_cores_per_server: int = Field(default=0, ge=0)  # per="core": each server counts at least this many


class VmShape(_Strict):
    name: str = "reference"
    vcpu: float = Field(gt=0)
    ram_gb: float = Field(gt=0)
    disk_gb: float = Field(default=0.0, ge=0)
    iops: float = Field(default=0.0, ge=0)


class DemandItem(VmShape):
    count: int = Field(gt=0)


class Policy(_Strict):
    """How nodes are used: oversubscription, what the host keeps for itself, the VM the prices are quoted in."""

    cpu_ratio: float = Field(default=4.0, gt=0)  # vCPUs sold per hardware thread
    ram_ratio: float = Field(default=1.0, gt=0)
    host_reserved_cores: int = Field(default=2, ge=0)
    host_reserved_gb: float = Field(default=16.0, ge=0)
    storage_reserved_cores: int = Field(default=0, ge=0)  # hyperconverged: cores kept for the storage daemons
    storage_reserved_gb: float = Field(default=0.0, ge=0)
    storage_replicas: float = Field(default=1.0, ge=1.0)  # usable TB and IOPS = raw / replicas
    target_utilisation: float = Field(default=0.5, ge=0, le=1)  # average CPU load, for the power bill
    reference_ghz: float | None = Field(default=None, gt=0)  # if set, vCPUs count in units of this clock
    reference_vm: VmShape
    cpu_ratio_from: str | None = None  # a `kvmkit congestion advise --json` file; overrides cpu_ratio


class PlanInput(_Strict):
    site: Site
    policy: Policy
    chassis: list[Chassis] = Field(min_length=1, max_length=MAX_ITEMS)
    cpus: list[Cpu] = Field(min_length=1, max_length=MAX_ITEMS)
    dimms: list[Dimm] = Field(min_length=1, max_length=MAX_ITEMS)
    drives: list[Drive] = Field(min_length=1, max_length=MAX_ITEMS)
    licences: list[Licence] = Field(default_factory=list, max_length=MAX_ITEMS)
    demand: list[DemandItem] = Field(default_factory=list, max_length=MAX_ITEMS)


def check_catalog(plan: PlanInput) -> None:
    """Cross-entry checks pydantic cannot place: they raise PlanProblem with the entry's location."""
    for field in ("chassis", "cpus", "dimms", "drives", "licences", "demand"):
        seen: set[str] = set()
        for index, item in enumerate(getattr(plan, field)):
            if item.name in seen:
                raise PlanProblem((field, index, "name"), f"duplicate name {item.name!r}")
            seen.add(item.name)
    for index, box in enumerate(plan.chassis):
        if not any(cpu_fits(box, cpu) for cpu in plan.cpus):
            raise PlanProblem(
                ("chassis", index),
                f"no CPU fits chassis {box.name!r} (socket {box.cpu_socket}, max TDP {box.max_cpu_tdp_w} W)",
            )


def cpu_fits(box: Chassis, cpu: Cpu) -> bool:
    """A CPU fits a chassis when the socket type matches and the chassis can cool its TDP."""
    return cpu.socket == box.cpu_socket and cpu.tdp_w <= box.max_cpu_tdp_w
