"""Child Python processes kvmkit starts as root (the freeze watchdog, the backup mount's FUSE server) start
isolated: a `kvmkit/` package planted in the folder an admin runs kvmkit from is never imported."""

from __future__ import annotations

import os
from pathlib import Path

from kvmkit.snapshot.guard import Watchdog


def test_the_watchdog_does_not_import_a_package_planted_in_the_current_folder(tmp_path, monkeypatch):
    planted = tmp_path / "cwd" / "kvmkit"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (planted / "snapshot").mkdir()
    (planted / "snapshot" / "__init__.py").write_text("")
    (planted / "snapshot" / "watchdog.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    monkeypatch.chdir(planted.parent)
    monkeypatch.setenv("PYTHONPATH", str(planted.parent))  # -I ignores this too
    dog = Watchdog("test:///default", "6695eb01-f6a4-8304-79aa-97f2502e193f", 5.0, "thaw", tmp_path / "wd.log")
    try:
        dog.arm()  # it connected and said ready: the real watchdog ran
    finally:
        dog.cancel()
    assert not marker.exists()
    assert os.getcwd() == str(planted.parent)  # the caller's own folder is unchanged
    assert Path(tmp_path / "wd.log").exists()
