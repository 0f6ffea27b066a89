"""Names a user (or a file read back from disk) gives kvmkit: one rule each, shared by the CLI and the models.

A name ends up in file names, object keys, RBD snapshot names and command lines of other tools, so none may be
empty, start with a dot (hidden, `..`) or a dash (read as an option by every CLI it reaches), or hold a slash.
"""

from __future__ import annotations

import re

from kvmkit.errors import InvalidInput

# libvirt accepts almost anything as a name; kvmkit takes the portable subset every management stack uses.
VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
VM_NAME_RULE = "1-128 of [A-Za-z0-9._+-], starting with a letter or digit"
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
SNAPSHOT_NAME_RULE = "1-64 of [A-Za-z0-9._-], not starting with a dot or a dash"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def check_vm_name(name: str) -> str:
    if not isinstance(name, str) or not VM_NAME_RE.match(name):
        raise InvalidInput(f"invalid VM name {name!r}: use {VM_NAME_RULE}")
    return name


def check_snapshot_name(name: str) -> str:
    if not isinstance(name, str) or not SNAPSHOT_NAME_RE.match(name):
        raise InvalidInput(f"invalid snapshot name {name!r}: use {SNAPSHOT_NAME_RULE}")
    return name
