"""`kvmkit tune`: audit a KVM host's BIOS/OS settings against a goal, explain, fix with rollback.

Module map (one concern per file, pure core and effectful edges kept apart):

    hostfs.py    HostView: every read of /sys, /proc, /dev and optional tools, under a configurable root
    checks.py    the registry of checks: id, title, collector; read_all → Readings (values, or UNKNOWN + reason)
    collect_cpu.py, collect_host.py   the collectors (CPU power/idle; memory, devices, kernel, I/O)
    readers.py   shared sysfs readers and parsers used by the collectors
    fixes.py     how each check is fixed: runtime write plan, persistent setting, BIOS item (pure)
    profiles.py  goal profiles (TOML data files) → validated Profile objects; user profiles and `extends`
    evaluate.py  pure: readings + profile → findings, score
    apply.py     runtime writes with a 0600 rollback file written first; rollback
    capture.py   `capture` → tar.gz of everything the checks read; open a capture as a HostView
    diff.py      pure: what differs between two hosts' readings
    cli.py       the typer sub-app mounted as `kvmkit tune`
"""
