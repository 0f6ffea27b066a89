#!/usr/bin/env bash
# `make demo`: bring the lab up and show what kvmkit does on it, with real output.
set -euo pipefail
cd "$(dirname "$0")/.."
K=.venv/bin/kvmkit
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "kvmkit lab up --ceph --rgw --storage mixed --disks 3   (TCG VM + qemu-guest-agent, XFS reflink pool, one-node Ceph + S3 gateway)"
$K lab down --yes >/dev/null 2>&1 || true   # start from a known lab: lab1 = one file disk + two RBD disks
$K lab up --ceph --rgw --storage mixed --disks 3

step "write 4 MiB of random data on every disk of the guest, checksum it"
write='for d in vda vdb vdc; do dd if=/dev/urandom of=/mnt/$d/demo bs=1M count=4 2>/dev/null; done; sync; sha256sum /mnt/vd?/demo'
$K lab exec lab1 -- /bin/sh -c "$write" | tee /tmp/kvmkit-demo.before

step "kvmkit snapshot create lab1 --backup   (one freeze; reflink + 2 × create_snap concurrently; backup after the thaw)"
name="demo-$(date +%H%M%S)"
export KVMKIT_CONFIG=examples/kvmkit.toml   # a backup target in /var/lib/kvmkit/demo-backups
rm -rf /var/lib/kvmkit/demo-backups && mkdir -p /var/lib/kvmkit/demo-backups  # the demo's own target, fresh
$K backup target init secondary --encryption none   # made anew on purpose (this host remembers the last one)
$K snapshot create lab1 --name "$name" --backup
$K backup verify lab1 "$name"

step "kvmkit backup create lab1 $name --target rgw   (the same snapshot to S3, encrypted: AES-256-GCM chunks and manifests, keyed chunk names; passphrase from a 0600 file)"
s3conf=$(mktemp /tmp/kvmkit-demo-s3.XXXXXX.toml)   # mktemp: 0600
s3pass=$(mktemp /tmp/kvmkit-demo-pass.XXXXXX)
.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$s3pass"
$K lab status --json | .venv/bin/python -c '
import json, sys
rgw = json.load(sys.stdin)["rgw"]
print(f"""[[backup_targets]]
name = "rgw"
kind = "s3"
endpoint = "{rgw["endpoint"]}"
bucket = "kvmkit-demo"
access_key_env = "KVMKIT_S3_ACCESS_KEY"
secret_key_env = "KVMKIT_S3_SECRET_KEY"
encryption = "repokey"
passphrase_file = "{sys.argv[1]}"
""")' "$s3pass" > "$s3conf"
creds=$($K lab status --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["rgw"]["credentials"])')
KVMKIT_S3_ACCESS_KEY=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_key"])' "$creds")
KVMKIT_S3_SECRET_KEY=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["secret_key"])' "$creds")
export KVMKIT_S3_ACCESS_KEY KVMKIT_S3_SECRET_KEY
KVMKIT_CONFIG="$s3conf" $K backup target init rgw --encryption repokey
KVMKIT_CONFIG="$s3conf" $K backup create lab1 "$name" --target rgw
KVMKIT_CONFIG="$s3conf" $K backup verify lab1 "$name" --target rgw
s3key=$(mktemp -u /tmp/kvmkit-demo-key.XXXXXX)
KVMKIT_CONFIG="$s3conf" $K backup key export --to "$s3key" rgw   # lose the key and the passphrase: lose the backups
rm -f "$s3conf" "$s3pass" "$s3key"

step "kvmkit snapshot create lab1 --crash-consistent   (no agent needed: the VM is paused instead of frozen)"
$K snapshot create lab1 --name "$name-crash" --crash-consistent

step "overwrite the data in the guest"
$K lab exec lab1 -- /bin/sh -c "$write"

step "kvmkit snapshot revert lab1 $name --force-stop   (stop; reflink swap + RBD clone, all-or-nothing; start)"
$K snapshot revert lab1 "$name" --force-stop --yes

step "checksums after the revert (must equal the first ones)"
$K lab exec lab1 -- /bin/sh -c 'sha256sum /mnt/vd?/demo' | tee /tmp/kvmkit-demo.after
if cmp -s /tmp/kvmkit-demo.before /tmp/kvmkit-demo.after; then echo "OK: every disk is back as it was at the snapshot"
else echo "MISMATCH"; exit 1; fi

step "kvmkit snapshot list lab1"
$K snapshot list lab1

step "kvmkit snapshot flatten lab1 && kvmkit snapshot delete   (RBD disks reverted by clone are detached first)"
$K snapshot flatten lab1 --yes   # a terminal would show the plan and ask
$K snapshot delete lab1 "$name" --yes
$K snapshot delete lab1 "$name-crash" --yes
$K backup list lab1

step "kvmkit congestion sample --interval 1 --count 3 --history   (per-VM CPU congestion, not just oversubscription)"
history=$(mktemp --suffix=.jsonl)
$K congestion sample --interval 1 --count 3 --history "$history" | tail -6

step "kvmkit tune vm lab1 --goal latency --history   (its definition judged, with what congestion measured for it)"
$K tune vm lab1 --goal latency --history "$history" | grep -E "^│ .*(cpu\.pinning|disk\.iothread)" || true
rm -f "$history"

step "kvmkit tune vm apply lab1 --only cpu.pinning   (the running VM is pinned live, no restart) and rollback"
$K tune vm apply lab1 --goal latency --only cpu.pinning --yes
$K tune vm rollback lab1 --yes

step "kvmkit tune audit --goal latency   (last lines: the score of this host per goal)"
$K tune audit --goal latency | tail -2 || true

step "kvmkit plan evaluate examples/plan/example.toml --top 3   (cost per delivered resource, 36/60 months)"
$K plan evaluate examples/plan/example.toml --top 3

step "a CloudStack-shaped host: kvmkit lab up --shape cloudstack   (qcow2 root on a template, cephx RBD volumes, keys only in libvirt secrets)"
cs_lab=/var/lib/kvmkit/demo-cloudstack
KVMKIT_LAB_DIR=$cs_lab $K lab down --yes >/dev/null 2>&1 || true
KVMKIT_LAB_DIR=$cs_lab $K lab up --shape cloudstack
cs_vm=demo-cloudstack-cloudstack1
step "snapshot + backup of $cs_vm   (RBD key read from the libvirt secret; the qcow2 chain read as the guest sees it)"
KVMKIT_LAB_DIR=$cs_lab $K snapshot create "$cs_vm" --name cs1 --backup
step "restore every disk of the backup to fresh files: self-contained qcow2 images (--format qcow2), no backing file"
cs_out=$(mktemp -d /var/tmp/kvmkit-demo-restore.XXXXXX)
KVMKIT_LAB_DIR=$cs_lab $K backup restore "$cs_vm" cs1 --format qcow2 --to "vda=$cs_out/vda.qcow2" \
  --to "vdb=$cs_out/vdb.qcow2" --to "vdc=$cs_out/vdc.qcow2" --to "vdd=$cs_out/vdd.qcow2"
root=$(virsh -c qemu:///system domblklist "$cs_vm" | awk '$1 == "vda" {print $2}')
qemu-img compare -f qcow2 -F qcow2 "$cs_out/vda.qcow2" "$root@cs1.kvmkit" && echo "OK: the restored root disk reads as the snapshot's qcow2 chain"
qemu-img info -f qcow2 "$cs_out/vda.qcow2" | grep -q backing && { echo "MISMATCH: backing file"; exit 1; } || echo "OK: no backing file"
rm -rf "$cs_out"
KVMKIT_LAB_DIR=$cs_lab $K snapshot delete "$cs_vm" cs1 --yes
KVMKIT_LAB_DIR=$cs_lab $K lab down --yes >/dev/null

step "CloudStack on StorPool: kvmkit lab up --shape cloudstack-storpool   (unnamed volumes by ~globalId on the FAKE StorPool API)"
sp_lab=/var/lib/kvmkit/demo-storpool
KVMKIT_LAB_DIR=$sp_lab $K lab down --yes >/dev/null 2>&1 || true
KVMKIT_LAB_DIR=$sp_lab $K lab up --shape cloudstack-storpool
sp_vm=demo-storpool-cloudstack-storpool1
export KVMKIT_STORPOOL_CONF=$sp_lab/storpool.conf
KVMKIT_LAB_DIR=$sp_lab $K snapshot create "$sp_vm" --name sp1
KVMKIT_LAB_DIR=$sp_lab $K snapshot create "$sp_vm" --name sp-group --crash-consistent
step "revert: detached from every client, VolumeRevert, re-attached as it was"
KVMKIT_LAB_DIR=$sp_lab $K snapshot revert "$sp_vm" sp1 --force-stop --yes
KVMKIT_LAB_DIR=$sp_lab $K snapshot delete "$sp_vm" sp1 --yes
KVMKIT_LAB_DIR=$sp_lab $K snapshot delete "$sp_vm" sp-group --yes
unset KVMKIT_STORPOOL_CONF
KVMKIT_LAB_DIR=$sp_lab $K lab down --yes >/dev/null

step "unattended operation is loud: a schedule for a VM that does not exist is refused; a failed job exits 1"
$K schedule add ghost --every 1h --keep-last 2 || echo "(refused, exit $?)"
$K schedule add ghost --every 1h --keep-last 2 --allow-undefined
$K schedule run --once || echo "(schedule run --once exited $?: the unit fails, kvmkit_snapshot_failures_total rises)"
$K schedule remove ghost

echo
echo "The lab stays up to explore: kvmkit lab status, kvmkit snapshot bench, kvmkit bench paths. 'kvmkit lab down' removes it."
