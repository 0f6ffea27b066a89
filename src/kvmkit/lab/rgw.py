"""A RADOS Gateway on the lab's Ceph: an S3 endpoint on 127.0.0.1 for S3 backup targets, with one user.

One radosgw (beast frontend, path-style S3), started like the mon and OSD: a foreground process in its own
session, its pid in the lab state, its log beside theirs, SIGKILLed by `lab down`. At its first start it makes
its pools (`.rgw.root`, `default.rgw.log|control|meta|buckets.index|buckets.data`); the lab's ceph.conf gives new
pools 8 PGs so that they fit the mon's `mon_max_pg_per_osd` on one OSD. Quotas are re-read on every request
(`rgw bucket quota ttl = 0` …) so a test can fill a bucket and see QuotaExceeded at once; real gateways cache
them for minutes. The S3 user's keys are generated and kept in `<ceph>/rgw/credentials.json` (0600).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel

from kvmkit.errors import EnvironmentProblem
from kvmkit.lab import procs
from kvmkit.lab.ceph import CephState

PORTS = (17480, 17580)
USER = "kvmkit"
NAME = "client.rgw.lab"
THREADS = 16  # default 512: each idle thread costs memory, and 2 cores never run more than a few requests


class RgwState(BaseModel):
    pid: int
    port: int
    credentials: Path  # {"access_key": …, "secret_key": …}, 0600

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def keys(self) -> tuple[str, str]:
        data = json.loads(self.credentials.read_text())
        return data["access_key"], data["secret_key"]


def start(ceph: CephState, timeout_s: float = 60.0) -> RgwState:
    """Start radosgw on a free loopback port and make sure the S3 user exists; on failure, stop it and raise."""
    root = ceph.dir / "rgw"
    root.mkdir(mode=0o700, exist_ok=True)
    port = procs.free_port(*PORTS)
    pid = procs.spawn(["radosgw", "-c", str(ceph.conf), "-n", NAME, "-f",
                       "--rgw-frontends", f"beast endpoint=127.0.0.1:{port}", "--rgw-data", str(root),
                       "--rgw-thread-pool-size", str(THREADS), "--rgw-bucket-quota-ttl", "0",
                       "--rgw-user-quota-bucket-sync-interval", "0", "--rgw-user-quota-sync-interval", "0"],
                      ceph.dir / "log" / "rgw.out")
    try:
        procs.wait_until(lambda: _answers(port), pid, "radosgw", f"answer on 127.0.0.1:{port}",
                         ceph.dir / "log" / f"{NAME}.log", timeout_s)
        state = RgwState(pid=pid, port=port, credentials=root / "credentials.json")
        _ensure_user(ceph.conf, state.credentials)
        return state
    except BaseException:
        procs.stop(pid, "radosgw")
        raise


def running(state: RgwState) -> bool:
    return procs.alive(state.pid)


def stop(state: RgwState) -> None:
    procs.stop(state.pid, "radosgw")


def _answers(port: int) -> bool:
    """radosgw listens only after it has reached the cluster and made its pools: an answer means ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any S3 answer (e.g. 403) is an answer
    except (urllib.error.URLError, OSError):
        return False


def _ensure_user(conf: Path, credentials: Path) -> None:
    """The S3 user with the keys in `credentials` (made fresh the first time; kept across gateway restarts)."""
    if credentials.exists():
        keys = json.loads(credentials.read_text())
    else:
        alphabet = string.ascii_uppercase + string.digits
        keys = {"access_key": "".join(secrets.choice(alphabet) for _ in range(20)),
                "secret_key": secrets.token_urlsafe(30)}
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(keys, fh)
    admin = ["radosgw-admin", "-c", str(conf), "-n", "client.admin"]
    try:
        info = json.loads(procs.run([*admin, "user", "info", "--uid", USER], "radosgw-admin user info"))
    except EnvironmentProblem:
        info = None  # no such user yet
    if info is None:
        procs.run([*admin, "user", "create", "--uid", USER, "--display-name", USER,
                   "--access-key", keys["access_key"], "--secret-key", keys["secret_key"]], "radosgw-admin user create")
    elif keys["access_key"] not in {k.get("access_key") for k in info.get("keys", [])}:
        procs.run([*admin, "key", "create", "--uid", USER, "--key-type", "s3",
                   "--access-key", keys["access_key"], "--secret-key", keys["secret_key"]], "radosgw-admin key create")
