"""The disk image of the side-by-side backup bench: the issue's mix of holes, log-like text and random data, and the
scattered 4 KiB rewrites an incremental then has to find. Seeded: every tool sees the same bytes, run after run."""

from __future__ import annotations

import os
import random
from pathlib import Path

MiB, BLOCK = 1 << 20, 4096


def log_pieces(rng: random.Random, count: int = 256, size: int = 8192) -> list[bytes]:
    """8 KiB pieces of log-like text; each text MiB is a random sequence of them (unique, compressible ~5×)."""
    levels, words = ["INFO", "WARN", "DEBUG", "ERROR"], ["GET", "PUT", "POST", "DELETE"]
    pieces = []
    for _ in range(count):
        lines, length = [], 0
        while length < size:
            line = (f"2026-12-03T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}."
                    f"{rng.randrange(1000):03d}Z {rng.choice(levels)} api[{rng.randrange(1, 40000)}]: "
                    f"{rng.choice(words)} /v1/items/{rng.randrange(10**6)} status={rng.choice((200, 201, 404, 500))} "
                    f"ms={rng.randrange(400)} id={rng.getrandbits(48):012x}\n")
            lines.append(line)
            length += len(line)
        pieces.append("".join(lines).encode()[:size])
    return pieces


def make_image(path: Path, size_mib: int, seed: int = 16) -> int:
    """40 % holes, 30 % text, 30 % random, by MiB in a seeded order; returns the bytes of data written."""
    rng = random.Random(seed)
    kinds = ["hole"] * (size_mib * 4 // 10) + ["text"] * (size_mib * 3 // 10)
    kinds += ["random"] * (size_mib - len(kinds))
    rng.shuffle(kinds)
    pieces = log_pieces(rng)
    written = 0
    with path.open("wb") as fh:
        fh.truncate(size_mib * MiB)
        for index, kind in enumerate(kinds):
            if kind == "hole":
                continue
            fh.seek(index * MiB)
            fh.write(b"".join(rng.choices(pieces, k=MiB // 8192)) if kind == "text" else rng.randbytes(MiB))
            written += MiB
        fh.flush()
        os.fsync(fh.fileno())
    return written


def scatter_writes(path: Path, percent: float, seed: int = 17) -> int:
    """Rewrite `percent` % of the image's 4 KiB blocks with random bytes, at scattered places; bytes changed."""
    rng = random.Random(seed)
    size = path.stat().st_size
    count = int(size // BLOCK * percent / 100)
    fd = os.open(path, os.O_RDWR)
    try:
        for block in rng.sample(range(size // BLOCK), count):
            os.pwrite(fd, rng.randbytes(BLOCK), block * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
    return count * BLOCK
