"""`kvmkit doctor`: is this host ready for each capability, one line per check with the fix.

checks.py is the pure core (observations → findings), probes.py the thin effectful edge (libvirt, files, Ceph),
run.py puts them together concurrently, cli.py prints.
"""
