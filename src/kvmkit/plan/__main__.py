"""`python -m kvmkit.plan …`: the plan commands on their own, with kvmkit's one-line errors and exit codes.

The same app is mounted as `kvmkit plan`; this entry point exists so the plan can run (and be documented)
without the rest of the CLI, e.g. on a laptop that has no libvirt.
"""

from __future__ import annotations

import sys

from kvmkit.errors import KvmkitError
from kvmkit.plan.cli import app


def main() -> None:
    try:
        app(standalone_mode=False, prog_name="kvmkit plan")
    except KvmkitError as exc:
        print(f"kvmkit: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
