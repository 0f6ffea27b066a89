"""Measuring VMs from the kernel's own files: what `kvmkit congestion` and `kvmkit memory` share.

Modules, one concern each:
    procfiles   effects at their smallest: read one procfs/sysfs/cgroupfs file (bounded), keep descriptors
                open for re-reading with one pread; pure parsers of PSI, mount tables and /proc/PID/cgroup
    qemu        QEMU processes: pure recognition (comm, exe, -name) and the scan of /proc that finds them
    percentile  pure: the percentile both SLO judges and advisers use
    sampler     the stateful loop: a reader's readings two at a time → reports on a fixed schedule; a cache
                that lets concurrent scrapes share one reading
    history     reports as JSON lines (0600, bounded lines), streamed back without loading the file
"""
