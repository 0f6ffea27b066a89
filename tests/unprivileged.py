"""Run Python as user `nobody` from wherever the checkout lives.

A checkout in root's home (0700 on Debian) is unreadable to `nobody`: neither the venv's interpreter nor its
site-packages nor the editable `src/` can be reached, and a test that runs `sys.executable` as `nobody` fails with
"No module named kvmkit" for a reason that has nothing to do with what it tests. So the modules the dropped-privilege
process imports are copied, with their import closure, into a private 0755 temp folder, and the base interpreter
(the real file behind the venv's symlink, readable by everyone) runs with that folder first on its path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SETPRIV_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# Prints the top-level packages/modules (file paths) that importing argv[1:] loaded from outside the stdlib.
_CLOSURE_SCRIPT = r"""
import importlib, json, sys, sysconfig
stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
for name in sys.argv[1:]:
    importlib.import_module(name)
tops = {}
for mod_name, mod in list(sys.modules.items()):
    path = getattr(mod, "__file__", None)
    if not path or mod_name.partition(".")[0] in tops:
        continue
    top = sys.modules.get(mod_name.partition(".")[0])
    top_path = getattr(top, "__file__", None) or path
    if any(top_path.startswith(s + "/") for s in stdlib) and "-packages/" not in top_path:
        continue
    tops[mod_name.partition(".")[0]] = top_path
print(json.dumps(tops))
"""


def _readable_by_everyone(path: Path) -> bool:
    """Every folder on the way is world-searchable and the file world-readable."""
    for parent in [*reversed(path.parents)]:
        if not parent.stat().st_mode & 0o001:
            return False
    return bool(path.stat().st_mode & 0o004)


@contextmanager
def python_for_nobody(*modules: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(argv prefix, env) that run Python as `nobody` able to import `modules` (and `kvmkit` as a whole)."""
    closure = subprocess.run([sys.executable, "-c", _CLOSURE_SCRIPT, "kvmkit", *modules], capture_output=True,
                             text=True, check=True, timeout=60)
    tops: dict[str, str] = json.loads(closure.stdout)
    # the venv's python is a symlink into the checkout; the file it names is the system interpreter
    python = os.path.realpath(sys.executable)
    base_path = json.loads(subprocess.run([python, "-I", "-c", "import sys, json; print(json.dumps(sys.path[1:]))"],
                                          capture_output=True, text=True, check=True, timeout=30).stdout)
    folder = Path(tempfile.mkdtemp(prefix="kvmkit-nobody-"))
    try:
        folder.chmod(0o755)
        for name, file in tops.items():
            source = Path(file)
            if any(file.startswith(entry + "/") for entry in base_path if entry) and _readable_by_everyone(source):
                continue  # the base interpreter finds it itself (Debian's libvirt/rados bindings, the stdlib)
            if source.name == "__init__.py":
                shutil.copytree(source.parent, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, folder / source.name)
        for path in folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {"PYTHONPATH": str(folder), "PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
        yield [*SETPRIV_NOBODY, python], env
    finally:
        shutil.rmtree(folder, ignore_errors=True)
