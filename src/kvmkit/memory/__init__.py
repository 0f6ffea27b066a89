"""`kvmkit memory`: RAM oversubscription next to what it costs each VM (pressure, swap, faults, OOM, balloon, KSM).

Oversubscription is what was promised (Σ configured VM memory per byte of host RAM); pressure is what the
guests pay for it: time their QEMU stalled in reclaim (cgroup memory PSI), major faults and swap-ins of the QEMU
process, OOM kills, and the guest's own view through the balloon driver. Like `congestion`, /proc, /sys and the
cgroup files are enough to measure; libvirt adds balloon figures and is the only way to act.

Modules, one concern each:
    model      records: readings (what the kernel and libvirt said at one instant) and reports (`sample --json`)
    parse      pure parsers: meminfo, vmstat, statm, stat, smaps (guest RAM vs QEMU overhead), QEMU's -m, KSM,
               memory.stat, memory.events, oom_control
    procfs     effects: /proc, /sys and cgroup files → readings; whatever is missing becomes a reason, not a crash
    balloon    effects: libvirt's bulk domain stats (balloon current/maximum, the guest's own stats), optional
    calc       pure: two readings → a report with rates; every null carries its reason
    collector  the only stateful piece: keeps the previous reading and emits reports
    history    reports as JSON lines, streamed back (bounded memory) for advise and policy
    advise     pure: the highest RAM oversubscription that kept memory pressure under the SLO
    policy     pure: SLO per VM class → memtune soft limit and balloon target actions, with a floor from the
               guest's own stats
    control    effects: apply actions through libvirt, journaled (0600), dry-run first, revert
    exporter   Prometheus collector for `kvmkit serve` (counters straight from the kernel: Prometheus does rates)
    view       rich rendering for `sample` and `top`
"""
