#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, as root: system packages, then the project venv.
# The libvirt/rbd/rados Python bindings come from Debian (they must match the C libraries), so the venv is
# made from /usr/bin/python3 with --system-site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# --host [WHEEL]: a production hypervisor gets the runtime only — Debian's libvirt/rbd/rados bindings and qemu-img,
# a venv (system site packages, so the bindings match the C libraries) with the kvmkit wheel; nothing of the lab
# (no Ceph daemons, radosgw, Chromium, kernel, busybox). Without WHEEL the wheel is built from this checkout.
# KVMKIT_HOST_VENV (default /opt/kvmkit) and KVMKIT_HOST_BIN (default /usr/local/bin; empty: no link) say where.
if [ "${1:-}" = "--host" ]; then
  HOST_PACKAGES=(python3-libvirt python3-rbd python3-rados python3-libnbd qemu-utils python3-venv python3-pip)
  venv="${KVMKIT_HOST_VENV:-/opt/kvmkit}"
  bin="${KVMKIT_HOST_BIN-/usr/local/bin}"
  missing=()
  for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "install: apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  wheel="${2:-}"
  if [ -z "$wheel" ]; then
    out="$(mktemp -d)"
    build="$(mktemp -d)"  # build from a copy: setuptools leaves build/ and *.egg-info beside the sources
    cp -r pyproject.toml README.md LICENSE src contrib examples "$build/"
    /usr/bin/python3 -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$build" 2>/dev/null \
      || /usr/bin/python3 -m pip wheel -q --no-deps -w "$out" "$build"
    rm -rf "$build"
    wheel="$(ls "$out"/kvmkit-*.whl)"
  fi
  [ -f "$wheel" ] || { echo "install: no wheel at $wheel" >&2; exit 2; }
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  "$venv/bin/python" -c 'import libvirt, rbd, rados' \
    || { echo "install: $venv does not see Debian's libvirt/rbd/rados bindings" >&2; exit 5; }
  "$venv/bin/pip" install -q --upgrade "$wheel"
  if [ -n "$bin" ]; then ln -sf "$venv/bin/kvmkit" "$bin/kvmkit"; fi
  echo "install: kvmkit $("$venv/bin/kvmkit" --version | cut -d' ' -f2) in $venv${bin:+, linked from $bin/kvmkit}"
  exit 0
fi

APT_PACKAGES=(
  qemu-system-x86 qemu-utils qemu-guest-agent qemu-block-extra
  libvirt-daemon-system libvirt-clients python3-libvirt
  ceph-mon ceph-osd ceph-common python3-rbd python3-rados radosgw python3-boto3
  fio iperf3 sockperf xfsprogs busybox-static linux-image-amd64 kmod
  python3-venv python3-pip util-linux e2fsprogs chromium prometheus
  restic borgbackup python3-pyfuse3 python3-libnbd python3-cryptography
)
STAMP=.venv/.installed
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install: apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps Debian's maintainer scripts from starting daemons (no init system here; the lab starts its
  # own); it is removed again unless it was there before.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import libvirt, rbd, rados' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$STAMP"
fi
echo "install: ok"
