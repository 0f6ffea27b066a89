"""Pure parsers of the kernel's memory files and of QEMU's memory option. Text in, numbers out; no I/O.

Each raises ValueError (or KeyError) on text it does not understand, for the edge to turn into a reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from kvmkit.congestion.classify import split_qemu_opts
from kvmkit.memory.model import KsmReading, RamSplit

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bkKmMgGtT]?)$")
_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}  # QEMU: no suffix = MiB


def meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo → bytes for `kB` fields, plain counts for the rest (HugePages_Total …)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if not fields:
            continue
        value = int(fields[0])
        out[name] = value * 1024 if len(fields) > 1 and fields[1] == "kB" else value
    if "MemTotal" not in out:
        raise ValueError("no MemTotal line")
    return out


def key_values(text: str) -> dict[str, int]:
    """`name value` lines (/proc/vmstat, memory.stat, memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def statm_rss_pages(text: str) -> int:
    """/proc/PID/statm: size resident shared text lib data dt → resident pages (what VmRSS shows)."""
    return int(text.split()[1])


def major_faults(stat: str) -> int:
    """Field 12 (majflt) of /proc/PID/stat; comm may hold spaces, so count from the last ')'."""
    return int(stat.rsplit(")", 1)[1].split()[9])


def qemu_memory_bytes(argv: list[str]) -> int | None:
    """Guest RAM from QEMU's `-m 128`, `-m 2G` or `-m size=131072k,slots=…,maxmem=…`; None if absent."""
    for i, arg in enumerate(argv):
        if arg in ("-m", "--m") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("-m=", "--m=")):
            value = arg.split("=", 1)[1]
        else:
            continue
        for position, part in enumerate(split_qemu_opts(value)):
            key, sep, val = part.partition("=")
            size = val if sep and key == "size" else key if not sep and position == 0 else None
            if size is not None:
                match = _SIZE.match(size)
                if match is None:
                    raise ValueError(f"QEMU -m {value!r}: not a size")
                return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
        return None
    return None


def _smaps_blocks(text: str) -> Iterator[dict[str, int]]:
    """One dict per mapping: its kB fields in bytes, plus `KernelPageSize`."""
    block: dict[str, int] = {}
    for line in text.splitlines():
        if not line or not line[0].isupper() or ":" not in line:  # a mapping header (address range …)
            if block:
                yield block
            block = {}
            continue
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB":
            block[name] = int(fields[0]) * 1024
    if block:
        yield block


def ram_split(smaps: str, configured_bytes: int | None, mono_ns: int) -> RamSplit:
    """Guest RAM resident vs the rest of QEMU, from /proc/PID/smaps.

    QEMU maps guest RAM as one mapping of exactly the configured size (a TCG QEMU also has a slightly larger,
    barely touched mapping beside it, so size order alone would pick the wrong one): that mapping when it exists;
    otherwise (NUMA nodes: one backend each) the largest mappings, biggest first, until they cover 98 % of the
    configured memory, none smaller than a sixteenth of it (so a translation cache or heap arena is never RAM).
    Hugetlb pages are not in Rss (nor in VmRSS): they are counted from Private/Shared_Hugetlb.
    """
    blocks = list(_smaps_blocks(smaps))
    if not blocks:
        raise ValueError("smaps holds no mapping")
    rss = sum(b.get("Rss", 0) for b in blocks)
    pss = sum(b.get("Pss", 0) for b in blocks)
    guest: list[dict[str, int]] = []
    exact = [b for b in blocks if configured_bytes and abs(b.get("Size", 0) - configured_bytes) <= 64 << 10]
    if exact:  # QEMU's memory backend maps exactly the configured size; other big mappings exist beside it
        guest = [max(exact, key=lambda b: b.get("Rss", 0) + b.get("Private_Hugetlb", 0))]
    elif configured_bytes:
        covered = 0
        for block in sorted(blocks, key=lambda b: b.get("Size", 0), reverse=True):
            if covered >= 0.98 * configured_bytes or block.get("Size", 0) < configured_bytes / 16:
                break
            guest.append(block)
            covered += block.get("Size", 0)
    hugetlb = sum(b.get("Private_Hugetlb", 0) + b.get("Shared_Hugetlb", 0) for b in guest)
    return RamSplit(
        guest_ram_rss=sum(b.get("Rss", 0) for b in guest) + hugetlb,
        hugetlb_bytes=hugetlb,
        rss=rss,
        pss=pss,
        hugepage_backed=any(b.get("KernelPageSize", 4096) > 4096 for b in guest),
        thp_bytes=sum(b.get("AnonHugePages", 0) for b in guest),
        mono_ns=mono_ns,
    )


def ksm(files: dict[str, str]) -> KsmReading:
    """/sys/kernel/mm/ksm/{run,pages_sharing,pages_shared,ksm_zero_pages} contents (ksm_zero_pages optional)."""
    zero = files.get("ksm_zero_pages")
    return KsmReading(
        run=int(files["run"]),
        pages_sharing=int(files["pages_sharing"]),
        pages_shared=int(files["pages_shared"]),
        zero_pages=int(zero) if zero is not None else None,
    )


def schedstat_run_ns(text: str) -> int:
    return int(text.split()[0])
