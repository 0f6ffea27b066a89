"""Live tunables of running domains through libvirt: scheduler parameters (congestion) and balloon size +
memtune soft limit (memory). The backends that kvmkit.slo.journal applies actions over.

Only libvirt's API is used (virDomainSetSchedulerParametersFlags, virDomainSetMemoryFlags,
virDomainSetMemoryParameters; live, not persistent), never cgroup files behind libvirt's back: libvirt owns those
cgroups and would undo or fight such writes. libvirt is imported when a backend is made, so the commands that only
measure never load it.
"""

from __future__ import annotations

import time
from typing import Any

from kvmkit.errors import EnvironmentProblem, InvalidInput, NotFound, OperationFailed

UNLIMITED_KIB = 9007199254740991  # VIR_DOMAIN_MEMORY_PARAM_UNLIMITED (a C #define the Python binding lacks)
MEMORY_PARAMS = ("balloon_kib", "soft_limit_kib")
BALLOON_SLACK_KIB = 4 * 1024  # a balloon within 4 MiB of its target has reached it (the guest moves whole pages)
BALLOON_WAIT_S = 15.0


class LiveDomains:
    """One libvirt connection; running domains by name. libvirt's errors become one-line KvmkitErrors."""

    def __init__(self, uri: str) -> None:
        try:
            import libvirt
        except ImportError:
            raise EnvironmentProblem("python libvirt bindings are not installed (python3-libvirt)") from None
        self._libvirt = libvirt
        # libvirt prints every error to stderr by default; ours are re-raised as one-line KvmkitErrors
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise EnvironmentProblem(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from None

    def _domain(self, name: str) -> Any:
        try:
            return self._conn.lookupByName(name)
        except self._libvirt.libvirtError:
            raise NotFound(f"no libvirt domain named {name!r}") from None

    def domains(self) -> list[str]:
        active = self._conn.listAllDomains(self._libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return sorted(d.name() for d in active)

    def close(self) -> None:
        self._conn.close()


class LibvirtScheduler(LiveDomains):
    """Live scheduler parameters (cpu_shares, vcpu_period, vcpu_quota …) of running domains."""

    def parameters(self, domain: str) -> dict[str, int]:
        try:
            params = self._domain(domain).schedulerParameters()
        except self._libvirt.libvirtError as exc:
            raise OperationFailed(f"{domain}: cannot read scheduler parameters: {exc}") from None
        return {k: int(v) for k, v in params.items() if isinstance(v, int)}

    def set_parameter(self, domain: str, param: str, value: int) -> None:
        flags = self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            self._domain(domain).setSchedulerParametersFlags({param: value}, flags)
        except self._libvirt.libvirtError as exc:
            message = exc.get_error_message()
            raise OperationFailed(f"{domain}: cannot set {param}={value}: {message}") from None


class LibvirtMemory(LiveDomains):
    """Live balloon size (`balloon_kib`, with `max_kib`) and memtune soft limit (`soft_limit_kib`) of domains."""

    def parameters(self, domain: str) -> dict[str, int]:
        dom = self._domain(domain)
        try:
            _, max_kib, balloon_kib, *_ = dom.info()
            memtune = dom.memoryParameters(self._libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except self._libvirt.libvirtError as exc:
            raise OperationFailed(f"{domain}: cannot read memory parameters: {exc.get_error_message()}") from None
        return {"balloon_kib": int(balloon_kib), "max_kib": int(max_kib),
                "soft_limit_kib": int(memtune.get("soft_limit", UNLIMITED_KIB))}  # fmt: skip

    def set_parameter(self, domain: str, param: str, value: int) -> None:
        if param not in MEMORY_PARAMS:
            raise InvalidInput(f"{domain}: {param} is not a memory control kvmkit sets")
        dom = self._domain(domain)
        live = self._libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            if param == "balloon_kib":
                dom.setMemoryFlags(value, live)
                self._wait_for_balloon(dom, value)
            else:
                dom.setMemoryParameters({"soft_limit": value}, live)
        except self._libvirt.libvirtError as exc:
            raise OperationFailed(f"{domain}: cannot set {param}={value}: {exc.get_error_message()}") from None

    @staticmethod
    def _wait_for_balloon(dom: Any, target_kib: int) -> None:
        """The guest moves its balloon at its own pace: wait (bounded) until it is within BALLOON_SLACK_KIB.

        libvirt's BALLOON_CHANGE event would spare the polling; it needs an event loop this short-lived command
        does not run. A guest that does not get there in time keeps the target (libvirt holds it); `kvmkit
        memory sample` shows where its balloon stands.
        """
        deadline = time.monotonic() + BALLOON_WAIT_S
        while abs(dom.info()[2] - target_kib) > BALLOON_SLACK_KIB and time.monotonic() < deadline:
            time.sleep(0.2)
