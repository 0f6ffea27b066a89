"""The crash-test hook works in a source checkout and nowhere else (an installed kvmkit ignores it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kvmkit
from kvmkit import failpoint

SRC = Path(kvmkit.__file__).resolve().parent


def test_the_hook_is_on_in_this_checkout():
    assert failpoint.enabled()


def test_an_installed_copy_ignores_the_hook(tmp_path):
    site = tmp_path / "site-packages"
    shutil.copytree(SRC, site / "kvmkit", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from kvmkit.failpoint import failpoint, enabled; failpoint('x'); print('alive', enabled())"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         env={"KVMKIT_FAILPOINT": "x", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "alive False", out.stderr
    here = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(SRC.parent)!r}); "
                           f"{code}"], env={"KVMKIT_FAILPOINT": "x"}, capture_output=True, text=True, timeout=60)
    assert here.returncode == -9  # SIGKILL at the step, in the checkout
