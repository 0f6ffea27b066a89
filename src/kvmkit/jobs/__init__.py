"""The jobs layer: every snapshot and backup run, whichever entry starts it (CLI, `schedule`, `--backup`,
backup-to-secondary), goes through here, so each repairs interrupted work first and leaves the same trace.

Words and modules:
- outcome.py   `Outcome` (what one VM's job produced or the error that stopped it) and `record_failure`, the one
               place a failed job becomes a health event (`kvmkit_*_failures_total`).
- snapshots.py `take`: recover pass, snapshot several VMs side by side, back the ready ones up after the thaw.
- backups.py   `back_up`: one snapshot to one target.
- schedule.py  schedules (`<state_dir>/schedules.json`) and `run_once`; schedule_cli.py is `kvmkit schedule`.
Job logs (one file per job and VM) are kvmkit.joblog; the snapshot and backup libraries open them.
"""
