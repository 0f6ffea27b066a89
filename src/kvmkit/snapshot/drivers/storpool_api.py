"""The StorPool API edge for the driver: where the API is (config), and one place every call goes through, so every
failure becomes one kvmkit error and transient errors are retried the way the binding intends, within a deadline.

* Config: /etc/storpool.conf through the binding's own loader (`spconfig.SPConfig`), or kvmkit's `[storpool]`
  section. A config without SP_AUTH_TOKEN, or one kvmkit cannot read, is an InvalidInput naming the file (CloudStack's
  StorPoolUtil refuses the same: "Invalid StorPool config. Missing SP_AUTH_TOKEN"), never an empty token that fails
  at the first call. The token is never put in a log line, a record or an error message.
* Retries: `spapi.Api.__call__` retries an answer marked `transient: true` and a refused or reset connection
  `transientRetries` times, sleeping `transientSleep(retry)` between tries (default 5 tries, 2**retry s). kvmkit keeps
  that loop and bounds it by time: a call made inside the freeze gets FREEZE_RETRY_S of retrying in all, any other
  RETRY_S, so a snapshot still meets the freeze deadline (config freeze_timeout_s, 10 s by default).
* MultiCluster: `[storpool] multi_cluster = true` sends every call the binding marks multi-cluster by its
  `MultiCluster/` path (spapi._format_path; CloudStack's StorPoolUtil calls the API that way throughout).
* Errors: the only error name a public source confirms is `objectDoesNotExist` (CloudStack's
  StorPoolUtil.objectExists); a 401/403 is a refused token; everything else is one OperationFailed line carrying
  the API's own name and description.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kvmkit.config import StorPoolSettings
from kvmkit.errors import EnvironmentProblem, InvalidInput, KvmkitError, NotFound, OperationFailed

with contextlib.redirect_stderr(io.StringIO()):  # the binding prints a notice to stderr when simplejson is absent
    from storpool import spapi, spcatch, spconfig

NOT_FOUND = {"objectDoesNotExist"}
RETRIES = 6
RETRY_S = 3.0  # retrying budget of a call outside the freeze
FREEZE_RETRY_S = 2.0  # … and of a snapshot call inside it (the freeze deadline is 10 s by default)
FIRST_SLEEP_S = 0.1


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    token: str = field(repr=False)
    source: str  # where it was read from, for messages (never the token)
    timeout_s: float = 10.0
    client_id: int | None = None  # this host's StorPool client id (SP_OURID): where snapshots are attached to read
    multi_cluster: bool = False  # MultiCluster/ paths ([storpool] multi_cluster)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def load_endpoint(settings: StorPoolSettings | None, env: dict[str, str] | None = None) -> Endpoint | None:
    """Where the API is, or None when nothing configures StorPool (no [storpool] section, no /etc/storpool.conf)."""
    env = dict(os.environ) if env is None else env
    sp = settings or StorPoolSettings()
    if sp.host:
        token = sp.token or (env.get(sp.token_env, "") if sp.token_env else "")
        if not token:
            where = f"environment variable {sp.token_env}" if sp.token_env else "token or token_env"
            raise InvalidInput(f"kvmkit config [storpool]: no API token ({where} is empty)")
        return Endpoint(sp.host, sp.port or 81, token, "kvmkit config [storpool]", sp.timeout_s, sp.client_id,
                        sp.multi_cluster)
    if not sp.conf.is_file():
        if settings is not None and settings.conf != StorPoolSettings().conf:
            raise InvalidInput(f"StorPool config {sp.conf} (from kvmkit's [storpool] conf) does not exist")
        return None
    try:
        with open(sp.conf, "rb") as fh:  # the binding's loader skips a file it cannot read: say so instead
            fh.read(1)
    except OSError as exc:
        raise InvalidInput(f"StorPool config {sp.conf}: cannot read it ({exc.strerror})") from None
    loader = type("KvmkitSPConfig", (spconfig.SPConfig,),
                  {"PATH_CONFIG": str(sp.conf), "PATH_CONFIG_DIR": str(sp.conf) + ".d"})
    try:
        cfg = loader(missing_ok=True)
        host, port = cfg["SP_API_HTTP_HOST"], int(cfg["SP_API_HTTP_PORT"])
        token = cfg.get("SP_AUTH_TOKEN", "")
        client_id = sp.client_id or (int(cfg["SP_OURID"]) if cfg.get("SP_OURID") else None)
    except (spconfig.SPConfigException, KeyError, ValueError) as exc:
        raise InvalidInput(f"{sp.conf}: not a usable StorPool config ({type(exc).__name__})") from None
    if not token:
        raise InvalidInput(f"StorPool config {sp.conf}: SP_AUTH_TOKEN is missing or empty")
    return Endpoint(host, port, token, str(sp.conf), sp.timeout_s, client_id, sp.multi_cluster)


class _OutOfTime(Exception):
    """Raised from the binding's retry sleep when the call's retrying budget is spent."""


class ApiEdge:
    """`spapi.Api` with the binding's transient retries, bounded per call by a deadline."""

    def __init__(self, endpoint: Endpoint, api: Any = None) -> None:
        self.endpoint = endpoint
        self._local = threading.local()  # the engine snapshots disks from several threads at once
        self.api = api or spapi.Api(host=endpoint.host, port=endpoint.port, auth=endpoint.token,
                                    timeout=endpoint.timeout_s, transientRetries=RETRIES,
                                    transientSleep=self._sleep, multiCluster=endpoint.multi_cluster)
        # the last try once the budget is spent: its own answer (or connection error) is the one reported
        self.last_try = None if api is not None else spapi.Api(
            host=endpoint.host, port=endpoint.port, auth=endpoint.token, timeout=endpoint.timeout_s,
            transientRetries=0, multiCluster=endpoint.multi_cluster)

    def _sleep(self, retry: int) -> float:
        """The binding sleeps what this returns; past the deadline the call stops retrying."""
        left = getattr(self._local, "deadline", 0.0) - time.monotonic()
        want = FIRST_SLEEP_S * 2 ** retry
        if left <= want:
            raise _OutOfTime
        return want

    def call(self, what: str, method: str, *args: Any, in_freeze: bool = False, **kwargs: Any) -> Any:
        budget = FREEZE_RETRY_S if in_freeze else RETRY_S
        self._local.deadline = time.monotonic() + budget
        try:
            try:
                return getattr(self.api, method)(*args, **kwargs)
            except _OutOfTime:
                if self.last_try is None:
                    raise
                return getattr(self.last_try, method)(*args, **kwargs)
        except _OutOfTime:
            raise OperationFailed(f"{what}: the StorPool API kept failing transiently for {budget:g} s "
                                  f"(at {self.endpoint.where})") from None
        except spapi.ApiError as exc:
            raise self.error(what, exc) from None
        except spcatch.InvalidArgumentError as exc:
            raise InvalidInput(f"{what}: {self.redact(str(exc))}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            if isinstance(exc, TimeoutError | socket.timeout):
                reason = f"no answer within {self.endpoint.timeout_s:g} s"
            raise EnvironmentProblem(f"cannot reach the StorPool API at {self.endpoint.where} "
                                     f"(from {self.endpoint.source}): {reason}") from None
        except ValueError:  # not JSON: something else listens there
            raise EnvironmentProblem(f"the service at {self.endpoint.where} (from {self.endpoint.source}) does not "
                                     "answer like the StorPool API") from None

    def error(self, what: str, exc: spapi.ApiError) -> KvmkitError:
        desc = self.redact(f"{exc.name}: {exc.desc}")
        if exc.status in (401, 403):
            return EnvironmentProblem(f"the StorPool API at {self.endpoint.where} refused kvmkit's token "
                                      f"(from {self.endpoint.source})")
        if exc.name in NOT_FOUND:
            return NotFound(f"{what}: {desc}")
        return OperationFailed(f"{what}: StorPool API error {desc}")

    def redact(self, text: str) -> str:
        return text.replace(self.endpoint.token, "***") if self.endpoint.token else text
