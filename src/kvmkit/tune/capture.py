"""`capture`: a tar.gz of everything the checks read on a host, and opening one as a HostView.

The capture is made by running every check through a RecordingView, so it holds exactly the files the checks
need (no guessing a list of paths that drifts from the code). Layout inside the archive:

    kvmkit-capture/meta.json        format, hostname, kernel, time, kvmkit version
    kvmkit-capture/root/...         the files read, at their host paths; listed folders as (empty) dirs;
                                    device nodes that were checked for existence as empty files; libvirt
                                    domain XML cut down to <name> and <memory> (no passwords leave the host)
    kvmkit-capture/probes/NAME      probe outputs (cpu_dma_latency, irqbalance, dmidecode, tuned-adm)
    kvmkit-capture/errors.json      path or probe:NAME → why it was unreadable there (not "does not exist")

Opening extracts into a temporary folder with members checked (no absolute paths, no '..', no links or
devices), so a capture from elsewhere cannot write outside it; and bounded (the archive's size, each member's,
the total and the member count are capped, checked from the headers before any content is read and again while
copying), so a 4.7 MB archive of zeros cannot grow to a gigabyte in memory or on disk.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from kvmkit import __version__
from kvmkit.errors import InvalidInput, NotFound
from kvmkit.tune.checks import read_all
from kvmkit.tune.collect_host import LIBVIRT_DEFS
from kvmkit.tune.hostfs import PROBE_NAMES, HostView, Unreadable

TOP = "kvmkit-capture"
CAPTURE_FORMAT = 1
MAX_ARCHIVE_BYTES = 64 << 20  # compressed
MAX_MEMBER_BYTES = 8 << 20  # the largest file a check reads (a big host's /proc/cpuinfo) is ~1 MB
MAX_TOTAL_BYTES = 64 << 20  # unpacked, on disk in a temporary folder: a real capture is a few MB
MAX_MEMBERS = 50_000


class RecordingView(HostView):
    """A live HostView that remembers every answer it gave, for the capture."""

    def __init__(
        self, root: Path = Path("/"), probe_dir: Path | None = None, recorded_errors: dict[str, str] | None = None
    ) -> None:
        super().__init__(root, probe_dir, recorded_errors)
        self.files: dict[str, str] = {}
        self.folders: dict[str, list[str]] = {}
        self.present: set[str] = set()
        self.probes: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def _failed(self, key: str, exc: Unreadable) -> None:
        if "does not exist" not in exc.reason:
            self.errors[key] = exc.reason.removeprefix(f"{key}: ")

    def read(self, host_path: str) -> str:
        try:
            text = super().read(host_path)
        except Unreadable as exc:
            self._failed(host_path, exc)
            raise
        if host_path.startswith(f"{LIBVIRT_DEFS}/") and host_path.endswith(".xml"):
            self.files[host_path] = _minimal_domain(text)  # domain XML can hold VNC passwords, auth, paths
        else:
            self.files[host_path] = text
        return text

    def listdir(self, host_path: str) -> list[str]:
        try:
            self.folders[host_path] = names = super().listdir(host_path)
        except Unreadable as exc:
            self._failed(host_path, exc)
            raise
        return names

    def exists(self, host_path: str) -> bool:
        found = super().exists(host_path)
        if found:
            self.present.add(host_path)
        return found

    def probe(self, name: str) -> str:
        try:
            self.probes[name] = out = super().probe(name)
        except Unreadable as exc:
            self.errors[f"probe:{name}"] = exc.reason
            raise
        return out


def _minimal_domain(text: str) -> str:
    """Only what the checks use from a libvirt definition: its name and memory. Unparseable stays unparseable."""
    try:
        domain = ET.fromstring(text)
    except ET.ParseError:
        return "<domain kvmkit-capture='unparseable at capture time'"
    kept = ET.Element("domain")
    for tag in ("name", "memory"):
        element = domain.find(tag)
        if element is not None:
            copy = ET.SubElement(kept, tag, {k: v for k, v in element.attrib.items() if k == "unit"})
            copy.text = element.text
    return ET.tostring(kept, encoding="unicode")


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mtime: float) -> None:
    info = tarfile.TarInfo(f"{TOP}/{name}")
    info.mtime = int(mtime)
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def capture(
    root: Path = Path("/"), probe_dir: Path | None = None, recorded_errors: dict[str, str] | None = None
) -> bytes:
    """Read every check on the live host (or a tree with saved probes) and return the tar.gz bytes."""
    view = RecordingView(root, probe_dir, recorded_errors)
    read_all(view)
    for extra in ("/proc/sys/kernel/hostname", "/proc/sys/kernel/osrelease"):
        try:
            view.read(extra)
        except Unreadable:
            pass
    for name in PROBE_NAMES:  # probes not used by a check (dmidecode) still help whoever reads the capture
        try:
            view.probe(name)
        except Unreadable:
            pass
    now = time.time()
    meta = {
        "format": CAPTURE_FORMAT,
        "hostname": view.files.get("/proc/sys/kernel/hostname", "unknown"),
        "kernel": view.files.get("/proc/sys/kernel/osrelease", "unknown"),
        "captured_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "kvmkit": __version__,
    }
    entries: dict[str, bytes | None] = {}
    for folder, names in view.folders.items():
        entries.setdefault(f"root{folder}", None)
        for name in names:
            entries.setdefault(f"root{folder}/{name}", None)
    for path in view.present:
        entries[f"root{path}"] = b""
    for path, text in view.files.items():
        entries[f"root{path}"] = (text + "\n").encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, "meta.json", json.dumps(meta, indent=2).encode(), now)
        _add(tar, "errors.json", json.dumps(view.errors, indent=2, sort_keys=True).encode(), now)
        _add(tar, "probes", None, now)
        for name, out in sorted(view.probes.items()):
            _add(tar, f"probes/{name}", (out + "\n").encode(), now)
        _add_tree(tar, entries, now)
    return buffer.getvalue()


def _add_tree(tar: tarfile.TarFile, entries: dict[str, bytes | None], mtime: float) -> None:
    """Add files and folders parents-first; a path that is both a file and a listed folder stays a file."""
    folders: set[str] = set()
    for name in entries:
        parts = PurePosixPath(name).parts
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for name in sorted(folders | set(entries)):
        data = entries.get(name)
        if name in folders and data is not None:
            continue  # cannot be both; the folder wins because its children were read
        _add(tar, name, None if name in folders else data, mtime)


def _safe_members(tar: tarfile.TarFile, source: str) -> Iterator[tarfile.TarInfo]:
    """Members one at a time (the archive is never listed whole first), each checked and bounded."""
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise InvalidInput(f"{source}: more than {MAX_MEMBERS} members: not a kvmkit capture")
        if member.size > MAX_MEMBER_BYTES:
            raise InvalidInput(f"{source}: member {member.name[:200]!r} has {member.size} bytes (at most "
                               f"{MAX_MEMBER_BYTES}): not a kvmkit capture")
        total += member.size
        if total > MAX_TOTAL_BYTES:
            raise InvalidInput(f"{source}: more than {MAX_TOTAL_BYTES} bytes unpacked: not a kvmkit capture")
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not member.name.startswith(f"{TOP}/"):
            raise InvalidInput(f"{source}: unsafe member {member.name!r}: not a kvmkit capture")
        if not (member.isfile() or member.isdir()):
            raise InvalidInput(f"{source}: member {member.name!r} is a link or device: not a kvmkit capture")
        yield member
        tar.members = []  # tarfile keeps every header it read; a capture is read once, front to back


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    """Recreate one checked member by hand: no modes, owners or times from the archive are trusted."""
    target = dest / member.name
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    data = tar.extractfile(member)
    with target.open("wb") as out:
        if data is not None:
            shutil.copyfileobj(data, out, 1 << 20)  # member.size is capped; the stream is read in pieces


def extract(source: Path, dest: Path) -> Path:
    """Unpack a capture into dest; returns the capture folder (with meta.json, root/, probes/)."""
    if not source.is_file():
        raise NotFound(f"capture {source} does not exist")
    if source.stat().st_size > MAX_ARCHIVE_BYTES:
        raise InvalidInput(f"{source}: {source.stat().st_size} bytes, more than a capture ({MAX_ARCHIVE_BYTES})")
    try:
        with tarfile.open(source, mode="r:gz") as tar:
            for member in _safe_members(tar, str(source)):
                _extract_member(tar, member, dest)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput(f"{source}: not a readable tar.gz capture ({exc})") from None
    folder = dest / TOP
    if not (folder / "meta.json").is_file():
        raise InvalidInput(f"{source}: no {TOP}/meta.json: not a kvmkit capture")
    return folder


def view_of(folder: Path) -> HostView:
    """A HostView over an extracted capture folder, or over a plain sysfs-like tree when there is no meta.json."""
    if not (folder / "meta.json").is_file():
        return HostView(folder)
    try:
        errors = json.loads((folder / "errors.json").read_text())
    except FileNotFoundError:
        errors = {}
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{folder}/errors.json: not readable JSON ({exc})") from None
    if not isinstance(errors, dict) or not all(isinstance(v, str) for v in errors.values()):
        raise InvalidInput(f"{folder}/errors.json: expected a map of path → reason")
    return HostView(folder / "root", probe_dir=folder / "probes", recorded_errors=errors)


def meta_of(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


@contextmanager
def opened(source: Path) -> Iterator[tuple[HostView, dict]]:
    """A capture file as (HostView, meta) for the duration of a with-block."""
    with tempfile.TemporaryDirectory(prefix="kvmkit-capture-") as tmp:
        folder = extract(source, Path(tmp))
        yield view_of(folder), meta_of(folder)
