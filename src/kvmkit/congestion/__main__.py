"""`python -m kvmkit.congestion …` = `kvmkit congestion …`, with the same one-line errors and exit codes."""

from __future__ import annotations

import sys

from kvmkit.congestion.cli import app
from kvmkit.errors import KvmkitError


def main() -> None:
    try:  # standalone: typer itself reports usage errors (exit 2) and Ctrl-C
        app(prog_name="kvmkit congestion")
    except KvmkitError as exc:
        print(f"kvmkit: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
