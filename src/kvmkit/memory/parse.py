"""Pure parsers of the kernel's memory files and of QEMU's memory option. Text in, numbers out; no I/O.

Each raises ValueError (or KeyError) on text it does not understand, for the edge to turn into a reason.
"""

from __future__ import annotations

import re

from kvmkit.memory.model import KsmReading, RamSplit
from kvmkit.sampling.qemu import qemu_option, split_qemu_opts

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
    value = qemu_option(argv, "m")
    if value is None:
        return None
    for position, part in enumerate(split_qemu_opts(value)):
        key, sep, val = part.partition("=")
        size = val if sep and key == "size" else key if not sep and position == 0 else None
        if size is not None:
            match = _SIZE.match(size)
            if match is None:
                raise ValueError(f"QEMU -m {value!r}: not a size")
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return None


# "\n" rather than "^" with re.M: anchoring on the newline lets the engine skip ahead (8× faster on 450 kB)
_SMAPS_SIZE = re.compile(r"\nSize: +(\d+) kB")
_SMAPS_RSS = re.compile(r"\nRss: +(\d+) kB")
_SMAPS_PSS = re.compile(r"\nPss: +(\d+) kB")


def _fields(block: str) -> dict[str, int]:
    """The kB fields of one smaps block, in bytes (`KernelPageSize` included)."""
    out: dict[str, int] = {}
    for line in block.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB":
            out[name] = int(fields[0]) * 1024
    return out


def ram_split(smaps: str, configured_bytes: int | None, mono_ns: int) -> RamSplit:
    """Guest RAM resident vs the rest of QEMU, from /proc/PID/smaps.

    QEMU maps guest RAM as one mapping of exactly the configured size (a TCG QEMU also has a slightly larger,
    barely touched mapping beside it, so size order alone would pick the wrong one): that mapping when it exists;
    otherwise (NUMA nodes: one backend each) the largest mappings, biggest first, until they cover 98 % of the
    configured memory, none smaller than a sixteenth of it (so a translation cache or heap arena is never RAM).
    Hugetlb pages are not in Rss (nor in VmRSS): they are counted from Private/Shared_Hugetlb.
    A QEMU has ~600 mappings (450 kB of text): totals come from regular expressions over the whole text, and only
    the chosen mappings are parsed line by line (13 ms → ~2 ms per VM here).
    """
    sizes = [(m.start() + 1, int(m.group(1)) * 1024) for m in _SMAPS_SIZE.finditer(smaps)]
    if not sizes:
        raise ValueError("smaps holds no mapping")
    rss = sum(int(v) for v in _SMAPS_RSS.findall(smaps)) * 1024
    pss = sum(int(v) for v in _SMAPS_PSS.findall(smaps)) * 1024
    chosen: list[int] = []
    if configured_bytes:
        exact = [i for i, (_, size) in enumerate(sizes) if abs(size - configured_bytes) <= 64 << 10]
        if exact:
            chosen = exact
        else:
            covered = 0
            for i in sorted(range(len(sizes)), key=lambda i: sizes[i][1], reverse=True):
                if covered >= 0.98 * configured_bytes or sizes[i][1] < configured_bytes / 16:
                    break
                chosen.append(i)
                covered += sizes[i][1]
    ends = [start for start, _ in sizes[1:]] + [len(smaps)]
    blocks = [_fields(smaps[sizes[i][0] : ends[i]]) for i in chosen]
    if len(blocks) > 1 and all(abs(sizes[i][1] - (configured_bytes or 0)) <= 64 << 10 for i in chosen):
        # several exactly sized mappings: the guest RAM is the touched one
        blocks = [max(blocks, key=lambda b: b.get("Rss", 0) + b.get("Private_Hugetlb", 0))]
    hugetlb = sum(b.get("Private_Hugetlb", 0) + b.get("Shared_Hugetlb", 0) for b in blocks)
    return RamSplit(
        guest_ram_rss=sum(b.get("Rss", 0) for b in blocks) + hugetlb,
        hugetlb_bytes=hugetlb,
        rss=rss,
        pss=pss,
        hugepage_backed=any(b.get("KernelPageSize", 4096) > 4096 for b in blocks),
        thp_bytes=sum(b.get("AnonHugePages", 0) for b in blocks),
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


def psi_totals(text: str) -> tuple[int, int | None]:
    """(some total µs, full total µs or None) of a PSI file, without parsing the averages (it runs per VM)."""
    parts = text.split("total=")
    if len(parts) < 2:
        raise ValueError("no PSI total")
    some = int(parts[1].split(None, 1)[0])
    return some, int(parts[2].split(None, 1)[0]) if len(parts) > 2 else None


def counter(text: str, name: str) -> int | None:
    """The value of `name` in a `name value` file (memory.events, memory.oom_control …), or None."""
    start = text.find(name + " ")
    while start > 0 and text[start - 1] != "\n":
        start = text.find(name + " ", start + 1)
    if start < 0:
        return None
    return int(text[start + len(name) + 1 :].split(None, 1)[0])
