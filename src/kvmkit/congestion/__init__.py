"""`kvmkit congestion`: how long VMs' vCPUs wait for a physical CPU (the steal the guest sees), measured from
/proc.

Oversubscription is what was allocated (vCPUs per physical CPU); congestion is what the guests feel. The
numbers come from /proc/PID/task/TID/schedstat (run ns, run-queue wait ns), so no libvirt is needed to
measure; libvirt is only the way to act (scheduler parameters) and an optional way to name domains.

Modules, one concern each:
    classify   pure: is a process QEMU, its domain name, what each thread is (vCPU, iothread, vhost, emulator)
    model      records: raw readings (what /proc said) and interval reports (what the CLI prints as --json)
    kernelfiles small parsers/readers of PSI, cpu lists, /proc/PID/cgroup, cgroup mounts and throttling, /proc/stat
    procfs     effects: /proc and cgroup files → readings; anything unreadable becomes a Skip, never a crash
    calc       pure: two readings → utilisation % and congestion %; percentiles
    collector  the only stateful piece: keeps the previous reading (one per thread) and emits reports
    history    append reports as JSON lines; stream them back without loading the file
    policy     pure: SLO per VM class, evaluated against a window of reports → scheduler actions
    control    effects: apply actions through libvirt's scheduler parameters, journal them (0600), revert
    advise     pure: the highest oversubscription ratio that would have kept the SLO, from a history
    exporter   Prometheus exporter (a custom collector: nothing grows between scrapes)
    view       rich rendering for `top`

Its benchmark (accuracy against controlled load, the cost of sampling) and load generators (loadgen: a process
that looks like QEMU; realqemu: real guests whose vCPU spins) live in `kvmkit.benchmarks`.
"""
