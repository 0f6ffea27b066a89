#!/usr/bin/env bash
# `make demo`: bring the lab up and show a live snapshot of a running VM, a revert, and the freeze window.
set -euo pipefail
cd "$(dirname "$0")/.."
K=.venv/bin/kvmkit
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "kvmkit lab up  (libvirt + TCG VM with qemu-guest-agent, XFS reflink pool)"
$K lab up --vms 1 --disks 2

step "write 4 MiB of random data in the guest and checksum it"
$K lab exec lab1 -- /bin/sh -c 'dd if=/dev/urandom of=/mnt/vda/demo bs=1M count=4 2>/dev/null; sync; sha256sum /mnt/vda/demo' | tee /tmp/kvmkit-demo.before

step "kvmkit snapshot create lab1  (freeze → reflink every disk at once → thaw)"
name="demo-$(date +%H%M%S)"
$K snapshot create lab1 --name "$name"

step "overwrite the data in the guest"
$K lab exec lab1 -- /bin/sh -c 'dd if=/dev/urandom of=/mnt/vda/demo bs=1M count=4 2>/dev/null; sync; sha256sum /mnt/vda/demo'

step "kvmkit snapshot revert lab1 $name --force-stop  (stop, swap every disk atomically, start)"
$K snapshot revert lab1 "$name" --force-stop

step "checksum after the revert (must equal the first one)"
$K lab exec lab1 -- sha256sum /mnt/vda/demo | tee /tmp/kvmkit-demo.after
if cmp -s /tmp/kvmkit-demo.before /tmp/kvmkit-demo.after; then echo "OK: data is back as it was at the snapshot"; else echo "MISMATCH"; exit 1; fi

step "kvmkit snapshot list lab1"
$K snapshot list lab1

step "kvmkit snapshot delete lab1 $name"
$K snapshot delete lab1 "$name"

echo
echo "The lab stays up for you to explore (kvmkit lab status, kvmkit snapshot bench); 'kvmkit lab down' removes it."
