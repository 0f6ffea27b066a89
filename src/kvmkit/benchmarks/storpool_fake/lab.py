"""The `cloudstack-storpool` lab shape: VMs whose disks are unnamed volumes of the FAKE StorPool API, made, tagged and
attached the way CloudStack's StorPool plugin does it — not StorPool.

* The fake runs as the lab's own service (`python -I -m kvmkit.benchmarks.storpool_fake`, cwd /), its pid in a 0600
  file in the lab folder; `lab down` stops it (it detaches its loop devices and removes its links and files). Its
  volumes live in its memory: if it is killed, the lab's StorPool VMs are gone with it (`lab down`, `lab up`).
* `<lab>/storpool.conf` (0600) points kvmkit at it: `KVMKIT_STORPOOL_CONF=<lab>/storpool.conf kvmkit …`.
* Volumes: `VolumeCreate` with no name (CloudStack's StorPoolUtil.volumeCreate sends "name": ""), tags as
  StorPoolHelper.addStorPoolTags sets them (`uuid` = the CloudStack volume's uuid, `cvm` = the VM's uuid, `cs`),
  attached read-write to this host's client and given to libvirt as <disk type='block'> on
  /dev/storpool-byid/<globalId> (CloudStack's StorPoolStorageAdaptor attaches by globalId).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import domain, procs
from kvmkit.lab.state import LabDisk, LabState

with contextlib.redirect_stderr(io.StringIO()):
    from storpool import spapi

MODULE = "kvmkit.benchmarks.storpool_fake"
CLIENT_ID = 1  # the fake's client id for this host (SP_OURID in the conf)
CS_TAG = "volume"  # CloudStack's `cs` tag on a volume


def _pidfile(state: LabState) -> Path:
    return state.dir / "fake-storpool.pid"


def conf_path(state: LabState) -> Path:
    return state.dir / "storpool.conf"


def _write_0600(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def cluster_id(state: LabState) -> str:
    """Per lab, so two labs' fakes on one host never make the same /dev/storpool-byid/<globalId> link."""
    return "fake." + ("".join(c for c in state.dir.name.lower() if c.isascii() and c.isalnum()) or "lab")


def _running_pid(state: LabState) -> int | None:
    try:
        pid = int(_pidfile(state).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid) and any(MODULE in part for part in procs.cmdline(pid)) else None


def ensure_running(state: LabState) -> spapi.Api:
    """The lab's fake StorPool API (started once per lab) and a binding client for it."""
    assert state.pool is not None
    if _running_pid(state) is None:
        ready = state.dir / "fake-storpool.ready"
        ready.unlink(missing_ok=True)
        log = state.dir / "log" / "fake-storpool.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            argv = [sys.executable, "-I", "-m", MODULE, "--root", str(state.pool.path / "fake-storpool"),
                    "--ready", str(ready), "--cluster-id", cluster_id(state)]
            proc = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        _write_0600(_pidfile(state), str(proc.pid))
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(state)
                raise EnvironmentProblem(f"the fake StorPool API did not start; see {log}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        ready.unlink(missing_ok=True)
        _write_0600(conf_path(state), f"SP_API_HTTP_HOST={info['host']}\nSP_API_HTTP_PORT={info['port']}\n"
                                      f"SP_AUTH_TOKEN={info['token']}\nSP_OURID={CLIENT_ID}\n")
    conf = dict(line.split("=", 1) for line in conf_path(state).read_text().splitlines() if "=" in line)
    return spapi.Api(host=conf["SP_API_HTTP_HOST"], port=int(conf["SP_API_HTTP_PORT"]), auth=conf["SP_AUTH_TOKEN"],
                     transientRetries=0, timeout=30)


def stop(state: LabState) -> bool:
    """Stop the lab's fake (SIGTERM: it detaches its loop devices and removes its links and files)."""
    pid = _running_pid(state)
    stopped = pid is not None and procs.stop(pid, MODULE, sig=15, timeout_s=30)
    _pidfile(state).unlink(missing_ok=True)
    conf_path(state).unlink(missing_ok=True)
    return stopped


def make_disks(state: LabState, name: str, vm_uuid: str, volume_uuids: list[str], size_mib: int
               ) -> tuple[tuple[domain.BlockDisk, ...], tuple[LabDisk, ...]]:
    """Two unnamed volumes with an ext4 each, attached as CloudStack attaches them."""
    api = ensure_running(state)
    specs, records = [], []
    for target, volume_uuid in zip(("vda", "vdb"), volume_uuids, strict=True):
        made = api.volumeCreate({"size": size_mib << 20, "tags": {"uuid": volume_uuid, "cvm": vm_uuid, "cs": CS_TAG}})
        api.volumesReassign(json=[{"volume": "~" + made.globalId, "rw": [CLIENT_ID]}])
        device = Path("/dev/storpool-byid") / made.globalId
        if not device.is_block_device():
            raise EnvironmentProblem(f"{name}: {device} did not appear")
        procs.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(device)],
                  "mkfs.ext4")
        specs.append(domain.BlockDisk(device))
        records.append(LabDisk(target=target, kind="block", source=str(device), size_mib=size_mib))
    return tuple(specs), tuple(records)
