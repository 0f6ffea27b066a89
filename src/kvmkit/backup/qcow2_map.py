"""The qemu-img edge of qcow2_changes: an image's backing chain (`qemu-img info`), its allocation map
(`qemu-img map`, streamed), and the backing file name in its header. Everything printed is untrusted: strict
models, bounded lines and sizes; anything unexpected raises Untrusted, so the caller falls back to hashing.

Why qemu-img and not a qcow2 parser: it is the code that wrote the image and the one the guest view reads it
through (backing chains, zero clusters, subclusters, compression), so its map is the guest's map.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["MAX_CHAIN", "MAX_LINE", "Layer", "MapEntry", "MapStream", "Untrusted", "backing_name", "chain",
           "parse_map"]

MAX_LINE = 4096  # one map entry is ~130 bytes
MAX_INFO_BYTES = 4 << 20  # `qemu-img info --backing-chain` (internal snapshot lists make it grow)
MAX_CHAIN = 64


class Untrusted(Exception):
    """The two snapshots cannot be compared through their maps; the message says why."""


class MapEntry(BaseModel):
    """One line of `qemu-img map --output=json`. Unknown keys are refused: a QEMU that reports something new
    may mean something this comparison does not understand (it then falls back to hashes)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    start: int = Field(ge=0)
    length: int = Field(ge=0)
    depth: int = Field(ge=0, le=MAX_CHAIN)
    present: bool
    zero: bool
    data: bool
    offset: int | None = Field(default=None, ge=0)
    compressed: bool = False  # QEMU ≥ 8.2 says so; 7.2 only omits the offset


class _FormatSpecific(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    data: dict[str, Any] = {}


class Layer(BaseModel):
    """The part of one `qemu-img info` layer this comparison relies on."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    filename: str = Field(max_length=4096)
    format: str = Field(max_length=64)
    virtual_size: int = Field(alias="virtual-size", ge=0)
    cluster_size: int | None = Field(default=None, alias="cluster-size", gt=0)
    encrypted: bool = False
    format_specific: _FormatSpecific | None = Field(default=None, alias="format-specific")


def backing_name(fd: int) -> bytes:
    """The backing file name in the qcow2 header (offset at byte 8, length at byte 16; at most 1023 bytes).
    Compared before qemu-img opens the older file's chain: if the older file is not what the caller believes
    (say a raw disk whose guest wrote a qcow2 header), qemu-img then follows no name the newer one does not."""
    header = os.pread(fd, 20, 0)
    if len(header) < 20:
        raise Untrusted("qcow2 header cut short")
    offset, length = int.from_bytes(header[8:16], "big"), int.from_bytes(header[16:20], "big")
    if offset == 0:
        return b""
    if length > 1023:
        raise Untrusted("backing file name longer than qcow2 allows")
    name = os.pread(fd, length, offset)
    if len(name) != length:
        raise Untrusted("backing file name past the end of the image")
    return name


def run_json(argv: list[str], limit: int) -> Any:
    """The JSON a short qemu-img command prints, read through a file and refused past `limit` bytes."""
    try:
        with tempfile.TemporaryFile() as out:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, timeout=120)
            out.seek(0)
            raw = out.read(limit + 1)
    except FileNotFoundError as exc:
        raise Untrusted(f"{argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise Untrusted(f"{argv[0]} {argv[1]} took more than 120 s") from exc
    if done.returncode != 0:
        raise Untrusted(f"{argv[0]} {argv[1]}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    if len(raw) > limit:
        raise Untrusted(f"{argv[0]} {argv[1]} printed more than {limit} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Untrusted(f"{argv[0]} {argv[1]} printed no JSON") from exc


def chain(path: Path) -> list[Layer]:
    """The image and its backing files, as qemu-img (the code that will read them) resolves them."""
    raw = run_json(["qemu-img", "info", "--output=json", "--backing-chain", "-f", "qcow2", str(path)],
                   MAX_INFO_BYTES)
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHAIN:
        raise Untrusted(f"{path}: unexpected qemu-img info output")
    try:
        return [Layer.model_validate(layer) for layer in raw]
    except ValidationError as exc:
        raise Untrusted(f"{path}: unexpected qemu-img info output ({exc.error_count()} errors)") from exc


class MapStream:
    """`qemu-img map --output=json` of one image, entries parsed as they are printed (one per line), so memory
    holds one line whatever the map's length."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__, with the process)
        try:
            self._proc = subprocess.Popen(["qemu-img", "map", "--output=json", "-f", "qcow2", str(path)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err)
        except FileNotFoundError as exc:
            self._err.close()
            raise Untrusted("qemu-img is not installed") from exc

    def __iter__(self) -> Iterator[MapEntry]:
        assert self._proc.stdout is not None
        yield from parse_map(iter(lambda: self._proc.stdout.readline(MAX_LINE), b""), str(self.path))
        if self._proc.wait() != 0:
            self._err.seek(0)
            message = self._err.read(4096).decode(errors="replace").strip()
            raise Untrusted(f"qemu-img map {self.path}: {message[-300:]}")

    def __enter__(self) -> MapStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc.poll() is None:  # stopped early (untrusted entry): this process is ours to end
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._err.close()


def parse_map(lines: Iterable[bytes], name: str = "map") -> Iterator[MapEntry]:
    """Entries from the lines of `qemu-img map --output=json`: `[{…},` / `{…},` / `{…}]`, one entry per line."""
    for number, line in enumerate(lines, 1):
        if len(line) >= MAX_LINE and not line.endswith(b"\n"):
            raise Untrusted(f"{name}: line {number} is longer than {MAX_LINE} bytes")
        text = line.strip()
        if number == 1:
            if not text.startswith(b"["):
                raise Untrusted(f"{name}: not a JSON map")
            text = text[1:]
        text = text.removesuffix(b"]") if text.endswith(b"]") else text.removesuffix(b",")
        if not text:
            continue
        try:
            yield MapEntry.model_validate_json(text)
        except ValidationError as exc:
            raise Untrusted(f"{name}: line {number} is not a map entry ({exc.errors()[0]['msg']})") from exc
