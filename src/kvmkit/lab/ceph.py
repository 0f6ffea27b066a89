"""A throw-away single-node Ceph for the lab: one mon, one memstore OSD, pool `rbd` of size 1.

Auth is `none` (the default lab's historical shape) or `cephx` (production's: every client, the lab's own tools
included, authenticates; restricted users are made with `create_client`, as CloudStack's and Nova's are).

Tuned for tests, per LAB-FACTS: `paxos propose interval = 0.01` brings the cluster up in about a second and a
snapshot in ~0.1 s (real clusters keep the 1 s default; benchmarks say which they ran with); no mgr (no rbd
operation needs it); clone format 2 so clones need no protected parent.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import procs

MON_PORTS = (16789, 16889)
POOL = "rbd"
Auth = Literal["none", "cephx"]


class CephState(BaseModel):
    dir: Path
    conf: Path
    port: int
    fsid: str
    mon_pid: int
    osd_pid: int
    pool: str = POOL
    auth: Auth = "none"


def write_conf(root: Path, fsid: str, port: int, memstore_bytes: int, auth: Auth = "none") -> Path:
    conf = root / "ceph.conf"
    conf.write_text(f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = {auth}
auth service required = {auth}
auth client required = {auth}
osd pool default size = 1
osd pool default min size = 1
# radosgw makes 6-7 pools at its first start: at the default 32 PGs each they would crowd one OSD's
# mon_max_pg_per_osd (250) and cost the OSD memory; 8 is plenty for a lab
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on insecure global id reclaim allowed = false
mon warn on pool no redundancy = false
mon warn on msgr2 not enabled = false
rbd default clone format = 2
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
keyring = {root}/keyring
mon data = {root}/mon.$id
osd data = {root}/osd.$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
ms bind port min = 6800
ms bind port max = 7300

[mon]
paxos propose interval = 0.01
# the lab runs no mgr on purpose (no rbd operation needs it): don't report MGR_DOWN after the 120 s grace
mon mgr mkfs grace = 31536000
mon data avail crit = 1
mon data avail warn = 2

[osd]
# At start an OSD sends mon commands to set its device class and crush position; with auth none, librados can
# send them before the monmap arrives ("wrong fsid") and the OSD exits. The lab places the OSD in crush itself.
osd class update on start = false
osd crush update on start = false
osd max object name len = 256
osd max object namespace len = 64
""")
    conf.chmod(0o644)  # QEMU (libvirt-qemu) reads it to reach the cluster
    return conf


def _mon_command(conf: Path, cmd: dict, timeout_s: float = 10.0) -> dict | list | int | None:
    """One mon command; a fresh client can race its monmap ("wrong fsid"), so that one error is retried."""
    for _attempt in range(50):
        try:
            return _mon_command_once(conf, cmd, timeout_s)
        except EnvironmentProblem as exc:
            if "wrong fsid" not in str(exc):
                raise
            time.sleep(0.05)
    raise EnvironmentProblem(f"ceph {cmd['prefix']}: the monitor kept answering 'wrong fsid'")


def _mon_command_once(conf: Path, cmd: dict, timeout_s: float) -> dict | list | int | None:
    import rados

    cluster = rados.Rados(conffile=str(conf))
    try:
        cluster.connect(timeout=int(timeout_s))
        ret, out, err = cluster.mon_command(json.dumps(cmd), b"", timeout=int(timeout_s))
    except rados.Error as exc:
        raise EnvironmentProblem(f"ceph {cmd['prefix']}: {exc}") from None
    finally:
        cluster.shutdown()
    if ret != 0:
        raise EnvironmentProblem(f"ceph {cmd['prefix']}: {err or ret}")
    return json.loads(out) if out else None


def _make_keyring(keyring: Path) -> None:
    """The cluster's first keys, seeded into the mon at mkfs (Ceph's manual deployment): mon., client.admin and
    osd.0. The file stays 0600: only root's tools read it; QEMU gets its user's key from a libvirt secret."""
    keyring.unlink(missing_ok=True)
    entities = [
        ("mon.", ["--cap", "mon", "allow *"]),
        ("client.admin", ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]),
        ("osd.0", ["--cap", "mon", "allow profile osd", "--cap", "osd", "allow *"]),
    ]
    for index, (name, caps) in enumerate(entities):
        create = ["--create-keyring"] if index == 0 else []
        procs.run(["ceph-authtool", *create, str(keyring), "--gen-key", "-n", name, *caps], "ceph-authtool")
    os.chmod(keyring, 0o600)


def create_client(conf: Path, name: str, pools: list[str], read_only: list[str] | tuple[str, ...] = ()) -> str:
    """A restricted user like a cloud's (`profile rbd` on its pools, `profile rbd-read-only` on the others, as
    Nova's user has on Glance's `images`); returns its key (base64). Idempotent."""
    osd_caps = ", ".join([f"profile rbd pool={pool}" for pool in pools]
                         + [f"profile rbd-read-only pool={pool}" for pool in read_only])
    out = _mon_command(conf, {"prefix": "auth get-or-create", "entity": f"client.{name}",
                              "caps": ["mon", "profile rbd", "osd", osd_caps], "format": "json"})
    if not isinstance(out, list) or not out or "key" not in out[0]:
        raise EnvironmentProblem(f"ceph auth get-or-create client.{name}: no key in the answer")
    return str(out[0]["key"])


def create_pool(conf: Path, pool: str) -> None:
    """An RBD pool of size 1 (idempotent: an existing pool is kept)."""
    _create_pool(conf, pool)


def start(root: Path, memstore_bytes: int = 4 << 30, auth: Auth = "none") -> CephState:
    """Create and start the cluster under root; on any failure, stop what was started and raise."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    for sub in ("run", "log"):
        (root / sub).mkdir(exist_ok=True)
    fsid = str(uuid.uuid4())
    port = procs.free_port(*MON_PORTS)
    conf = write_conf(root, fsid, port, memstore_bytes, auth)
    monmap = root / "monmap"
    procs.run(["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a", f"[v1:127.0.0.1:{port}]",
               str(monmap)], "ceph monmap")
    mkfs = ["ceph-mon", "-c", str(conf), "--mkfs", "-i", "a", "--monmap", str(monmap)]
    if auth == "cephx":
        _make_keyring(root / "keyring")
        mkfs += ["--keyring", str(root / "keyring")]
    procs.run(mkfs, "ceph-mon --mkfs")
    mon_pid = procs.spawn(["ceph-mon", "-c", str(conf), "-i", "a", "-f"], root / "log" / "mon.a.out")
    osd_pid = 0
    try:
        _wait_port(port, mon_pid, root / "log" / "mon.a.log")
        osd_uuid = str(uuid.uuid4())
        osd_id = _mon_command(conf, {"prefix": "osd new", "uuid": osd_uuid, "format": "json"})
        osd_id = int(osd_id["osdid"]) if isinstance(osd_id, dict) else 0
        (root / f"osd.{osd_id}").mkdir(exist_ok=True)
        _mon_command(conf, {"prefix": "osd crush add", "id": osd_id, "weight": 0.01,
                            "args": ["host=lab", "root=default"]})  # memstore asserts if its data folder is missing
        procs.run(["ceph-osd", "-c", str(conf), "-i", str(osd_id), "--mkfs", "--osd-uuid", osd_uuid],
                  "ceph-osd --mkfs")
        osd_pid = procs.spawn(["ceph-osd", "-c", str(conf), "-i", str(osd_id), "-f"], root / "log" / "osd.out")
        state = CephState(dir=root, conf=conf, port=port, fsid=fsid, mon_pid=mon_pid, osd_pid=osd_pid, auth=auth)
        _wait_osd_up(conf, osd_pid)
        # clone v2 (no protected parent needed) is what librbd's "auto" picks on a cluster that requires mimic
        # clients, as every current cluster does; a client without ceph.conf (CloudStack's) depends on it
        _mon_command(conf, {"prefix": "osd set-require-min-compat-client", "version": "mimic"})
        _create_pool(conf, POOL)
        return state
    except BaseException:
        procs.stop(osd_pid, "ceph-osd") if osd_pid else None
        procs.stop(mon_pid, "ceph-mon")
        raise


def _wait_port(port: int, pid: int, log: Path, timeout_s: float = 20.0) -> None:
    procs.wait_until(lambda: not procs.port_free(port), pid, "ceph-mon", f"listen on 127.0.0.1:{port}", log, timeout_s)


def _wait_osd_up(conf: Path, pid: int, timeout_s: float = 30.0) -> None:
    def up() -> bool:
        stat = _mon_command(conf, {"prefix": "osd stat", "format": "json"})
        return isinstance(stat, dict) and stat.get("num_up_osds", 0) >= 1
    procs.wait_until(up, pid, "ceph-osd", "come up", conf.parent / "log", timeout_s, interval_s=0.1)


def _create_pool(conf: Path, pool: str) -> None:
    import rados
    import rbd

    _mon_command(conf, {"prefix": "osd pool create", "pool": pool, "pg_num": 8})
    _mon_command(conf, {"prefix": "osd pool set", "pool": pool, "var": "size", "val": "1",
                        "yes_i_really_mean_it": True})
    cluster = rados.Rados(conffile=str(conf))
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            ioctx.application_enable("rbd")
            rbd.RBD().pool_init(ioctx, True)
    finally:
        cluster.shutdown()


def health(conf: Path) -> str:
    try:
        status = _mon_command(conf, {"prefix": "health", "format": "json"}, timeout_s=5)
    except EnvironmentProblem:
        return "UNREACHABLE"
    return status.get("status", "UNKNOWN") if isinstance(status, dict) else "UNKNOWN"


def stop(state: CephState) -> None:
    # SIGKILL: a memstore OSD writes its whole store on SIGTERM, which only slows a throw-away cluster's end.
    procs.stop(state.osd_pid, "ceph-osd")
    procs.stop(state.mon_pid, "ceph-mon")
