"""`kvmkit lab up | status | down | freeze-demo`: thin CLI over kvmkit.lab.lab."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from kvmkit import config
from kvmkit.confirm import DRY_RUN, YES, go_ahead
from kvmkit.lab import lab
from kvmkit.lab import state as lab_state
from kvmkit.output import console, disk_record, err_console, print_json, print_table

app = typer.Typer(no_args_is_help=True)
disk_record(lab.LabDiskStatus)  # --json names each disk `disk` (the lab's state file keeps `target`)


def _settings(connect: str | None) -> tuple[Path, str]:
    settings = config.load()
    return settings.lab_path, connect or settings.libvirt_uri


@app.command()
def up(
    vms: int = typer.Option(1, "--vms", help="Number of VMs (lab1 … labN)."),
    disks: int = typer.Option(2, "--disks", help="Data disks per VM."),
    ceph: bool = typer.Option(False, "--ceph", help="Start a one-node Ceph; VMs get RBD data disks."),
    storage: lab.Storage | None = typer.Option(None, "--storage", help="file, rbd or mixed (1 file + rest RBD)."),
    disk_size: int = typer.Option(1024, "--disk-size", help="Size of each data disk in MiB."),
    fio: bool = typer.Option(False, "--fio", help="Guests carry fio (for kvmkit bench --vm); 384 MiB RAM each."),
    rgw: bool = typer.Option(False, "--rgw", help="Also an S3 gateway (radosgw) on the Ceph, for S3 backup targets."),
    shape: str = typer.Option("default", "--shape",
                              help="VM disks as: default, cloudstack, nova, libvirt, cloudstack-storpool."),
    connect: str | None = typer.Option(None, "--connect", "-c", help="libvirt URI (default from config)."),
    json_out: bool = typer.Option(False, "--json", help="Print the lab status as JSON."),
) -> None:
    """Bring the lab up (idempotent: running twice is safe)."""
    lab_dir, uri = _settings(connect)
    t0 = time.monotonic()
    out = err_console if json_out else console

    def say(message: str) -> None:
        out.print(f"[dim]lab:[/] {message}")
    lab.up(lab_dir, uri, vms=vms, disks_per_vm=disks, with_ceph=ceph, storage=storage, disk_size_mib=disk_size,
           with_fio=fio, with_rgw=rgw, shape=shape, progress=say)
    say(f"up in {time.monotonic() - t0:.1f} s")
    _show(lab.status(lab_dir), json_out)


@app.command()
def status(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """What the lab runs: VMs, their disks and agents, Ceph health."""
    lab_dir, _ = _settings(None)
    _show(lab.status(lab_dir), json_out)


@app.command()
def down(dry_run: bool = DRY_RUN, yes: bool = YES,
         json_out: bool = typer.Option(False, "--json", help="Print what was (or would be) done as JSON.")) -> None:
    """Stop exactly what the lab started, unmount, and remove what it made."""
    lab_dir, _ = _settings(None)
    plan = down_plan(lab_state.load(lab_dir))
    if not dry_run:
        go_ahead("kvmkit lab down", plan, yes)
    done: list[str] = []

    def say(message: str) -> None:
        done.append(message)
        if not json_out:
            console.print(f"[dim]lab:[/] {message}")
    was_up = bool(plan) if dry_run else lab.down(lab_dir, progress=say)
    if json_out:
        print_json({"dir": lab_dir, "was_up": was_up, "dry_run": dry_run, "plan": plan, "done": done})
    elif dry_run:
        console.print("\n".join(f"lab: would {line}" for line in plan) if plan else "lab: nothing to take down",
                      markup=False, highlight=False, soft_wrap=True)
    elif not was_up:
        console.print("lab: nothing to take down")


def down_plan(state: lab_state.LabState | None) -> list[str]:
    """What `lab down` stops and removes, from the lab's own record (nothing else is touched)."""
    if state is None:
        return []
    plan = [f"destroy and undefine VM {vm.name} and delete its disks ({', '.join(d.target for d in vm.disks)})"
            for vm in state.vms]
    if state.secrets:
        plan.append(f"undefine {len(state.secrets)} libvirt secret(s) it defined")
    plan.append("stop a scratch VM or daemon a killed benchmark left, if any")
    if state.rgw is not None:
        plan.append("stop the S3 gateway (radosgw)")
    if state.ceph is not None:
        plan.append(f"stop Ceph (mon pid {state.ceph.mon_pid}, osd pid {state.ceph.osd_pid})")
    if state.pool is not None:
        plan.append(f"unmount and remove the {state.pool.kind} pool {state.pool.path}")
    plan += [f"stop the {name} it started (pid {pid})" for name, pid in sorted(state.started_pids.items())
             if name in ("libvirtd", "virtlogd")]
    plan.append(f"remove the lab folder {state.dir}")
    return plan


def _show(st: lab.LabStatus, json_out: bool) -> None:
    if json_out:
        print_json(st)
        return
    if not st.up:
        console.print(f"lab: down ({st.dir})")
        return
    rows = [(vm.name, vm.state, "yes" if vm.agent_ready else "no",
             ", ".join(f"{d.target}:{d.driver}" for d in vm.disks)) for vm in st.vms]
    print_table(f"kvmkit lab ({st.accel})", ["VM", "state", "agent", "disks"], rows)
    if st.pool:
        console.print(f"pool: {st.pool['kind']} at {st.pool['path']}")
    if st.ceph:
        console.print(f"ceph: {st.ceph.health}, pool {st.ceph.pool}, conf {st.ceph.conf}")
    if st.rgw:
        console.print(f"rgw: S3 at {st.rgw.endpoint} ({'running' if st.rgw.running else 'DOWN'}), "
                      f"keys in {st.rgw.credentials}")


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    vm: str,
    argv: list[str] = typer.Argument(..., help="Program and arguments to run in the guest (after --)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the program."),
    connect: str | None = typer.Option(None, "--connect", "-c", help="libvirt URI (default from config)."),
) -> None:
    """Run a program in a VM through its guest agent; prints its output and exits with its exit code."""
    import sys

    from kvmkit.virt import agent
    from kvmkit.virt.connection import connection, lookup

    _, uri = _settings(connect)
    with connection(uri) as conn:
        result = agent.guest_exec(lookup(conn, vm), argv, timeout_s=timeout)
    sys.stdout.write(result.stdout.decode(errors="replace"))
    sys.stderr.write(result.stderr.decode(errors="replace"))
    raise typer.Exit(result.exit_code)
