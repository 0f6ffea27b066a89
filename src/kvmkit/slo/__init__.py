"""SLOs per VM class, judged from a sample history and acted on through libvirt: the core that `kvmkit congestion`
and `kvmkit memory` share (each keeps its own classes, judgement and actions).

Modules, one concern each:
    policy     pure: the planned change (Action), the TOML policy file (`load` only parses), which class a domain
               falls in, the lower-priority neighbours a suffering VM may take from
    journal    effects: apply actions over a backend with an intent/outcome journal (0600), dry-run, revert newest
               first where the value still holds what kvmkit set
    commands   the CLI edge of `policy`, `enforce` and `revert`: tables, --json, the journal's default place
"""
