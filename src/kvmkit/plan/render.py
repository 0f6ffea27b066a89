"""Human output of plan results: rich tables and CSV. Formatting only; the numbers come from the records."""

from __future__ import annotations

import csv
import io

from rich.table import Table

from kvmkit.output import console, print_table
from kvmkit.plan.costmodel import BREAKDOWN_KEYS
from kvmkit.plan.fleet import FleetPlan
from kvmkit.plan.records import Configuration, EvaluationSummary
from kvmkit.plan.sensitivity import Sensitivity

CSV_COLUMNS = (
    "rank", "id", "months", "monthly_cost_per_node", *(f"breakdown_{k}" for k in BREAKDOWN_KEYS),
    "nodes_per_rack", "rack_binding", "vcpu", "ram_gb", "storage_tb", "iops", "vms_per_node",
    "binding_resource", "cost_per_vm_month", "cost_per_vcpu_month", "cost_per_gb_ram_month",
    "cost_per_tb_month", "cost_per_kiops_month",
)  # fmt: skip


def money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def evaluation_csv(summary: EvaluationSummary) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in summary.configurations:
        record = c.model_dump()
        record.update({f"breakdown_{k}": v for k, v in c.breakdown.items()})
        writer.writerow(["" if record[col] is None else record[col] for col in CSV_COLUMNS])
    return out.getvalue()


def _binding(c: Configuration) -> str:
    return f"{c.binding_resource}/{c.rack_binding.removeprefix('rack_')}"


def evaluation_table(summary: EvaluationSummary) -> None:
    ref = summary.reference_vm
    title = (
        f"{summary.feasible:,} of {summary.evaluated:,} configurations can host the reference VM "
        f"({ref['vcpu']:g} vCPU · {ref['ram_gb']:g} GB · {ref['disk_gb']:g} GB · {ref['iops']:g} IOPS)"
    )
    rows = [
        (c.rank, c.id, money(c.cost_per_vm_month), c.vms_per_node, _binding(c), c.nodes_per_rack,
         money(c.monthly_cost_per_node), money(c.cost_per_vcpu_month), money(c.cost_per_gb_ram_month),
         money(c.cost_per_tb_month), money(c.cost_per_kiops_month))
        for c in summary.configurations
    ]  # fmt: skip
    table = Table(title=title, header_style="bold", caption="binds: node resource / what fills the rack; "
                  "costs are per month")  # fmt: skip
    for name in ("#", "configuration", "/VM", "VMs", "binds", "per rack", "/node", "/vCPU", "/GB", "/TB",
                 "/kIOPS"):  # fmt: skip
        table.add_column(name, no_wrap=name == "configuration", justify="left" if name == "configuration" else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)


def fleet_table(fleet: FleetPlan) -> None:
    rows = [(n.id, n.count, money(n.monthly_cost_per_node), ", ".join(f"{k} {v}" for k, v in n.vms.items()))
            for n in fleet.nodes]  # fmt: skip
    mode = "one configuration" if fleet.single_type else "a mix of configurations"
    print_table(f"Fleet over {fleet.months} months, {mode}: {fleet.total_nodes} nodes in {fleet.racks} racks",
                ("configuration", "nodes", "node/mo (no rack)", "VMs placed"), rows)  # fmt: skip
    util = ", ".join(f"{k} {v:.1%}" for k, v in fleet.utilisation.items())
    print_table(None, ("total/mo", "nodes/mo", "racks/mo", "lower bound", "utilisation", "solve"),
                [(money(fleet.total_monthly_cost), money(fleet.node_monthly_cost), money(fleet.rack_monthly_cost),
                  money(fleet.lower_bound), util, f"{fleet.solve_seconds:.2f} s")])  # fmt: skip


def sensitivity_table(result: Sensitivity) -> None:
    base = result.baseline
    rows = []
    for sweep in result.parameters:
        for point in sweep.points:
            rows.append((sweep.name, f"{point.value:g}", money(point.cost_per_vm_month), point.best_id or "none",
                         point.binding_resource or ""))  # fmt: skip
    print_table(f"Baseline ({result.months} months): {base.best_id} at {money(base.cost_per_vm_month)} per VM-month",
                ("parameter", "value", "per VM/mo", "best configuration", "binds"), rows)  # fmt: skip
