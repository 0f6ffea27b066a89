"""Build the lab's tiny guest from Debian packages only: the host's Debian kernel + a busybox initramfs.

The initramfs carries busybox-static, /usr/sbin/qemu-ga (and fio, for in-guest benchmarks) with the libraries
`ldd` lists, and the virtio + ext4 modules in the order `modprobe --show-depends` gives. Its init mounts every
data disk at /mnt/<dev> and runs the agent on the virtio-serial port. The build is deterministic and cached by
the inputs' identity, so `lab up` rebuilds only when the kernel or the agent changed.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kvmkit.errors import EnvironmentProblem

MODULES = ["virtio_pci", "virtio_blk", "virtio_console", "ext4"]
# memory tests' guests (`build(balloon=True)`, their own initrd flavour): the balloon driver, so libvirt's balloon
# target and the guest's own memory stats (virDomainMemoryStats) work; guest tmpfs (/run) is the allocator.
BALLOON_MODULES = ["virtio_balloon"]
AGENT = "/usr/sbin/qemu-ga"
# fio links librbd, ICU and friends (~80 MB): only bench guests carry it, and they get more RAM.
FIO = "/usr/bin/fio"
# network bench guests (`build(net=True)`, their own flavour): virtio-net, iperf3 and sockperf (kvmkit bench net).
NET_MODULES = ["virtio_net"]
NET_TOOLS = ["/usr/bin/iperf3", "/usr/bin/sockperf"]
BUSYBOX = Path("/bin/busybox")
XZ_MAGIC = b"\xfd7zXZ\x00"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /run /var /tmp /mnt
ln -s /run /var/run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "kvmkit-guest: init" > /dev/console
while read -r mod; do insmod "/lib/modules/$mod" 2>/dev/null; done < /etc/modules.order
mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/*; do
  [ -e "$port/name" ] && ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done
for dev in /sys/block/vd*; do
  [ -e "$dev" ] || continue
  name=${dev##*/}
  mkdir -p "/mnt/$name"
  mount -t ext4 -o noinit_itable "/dev/$name" "/mnt/$name" && echo "kvmkit-guest: mounted /mnt/$name" > /dev/console
done
if grep -q kvmkit_noagent /proc/cmdline; then
  echo "kvmkit-guest: no agent (kvmkit_noagent)" > /dev/console
  exec sleep 2147483647
fi
echo "kvmkit-guest: starting qemu-ga" > /dev/console
exec /usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run
"""


# qemu-ga runs /sbin/shutdown for guest-shutdown (libvirt's agent shutdown): busybox has no such applet, and the
# lab guest has no ACPI daemon, so this is how `virsh shutdown` / --force-stop stop it cleanly.
SHUTDOWN_SCRIPT = r"""#!/bin/busybox sh
sync
for m in /mnt/*; do umount "$m" 2>/dev/null; done
case " $* " in *" -r "*) reboot -f ;; *) poweroff -f ;; esac
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    cmdline: str = "console=ttyS0 panic=-1 quiet"


def kernel_release() -> str:
    """The newest installed Debian kernel (not necessarily the running one: hosts here run another kernel)."""
    vmlinuzes = sorted(Path("/boot").glob("vmlinuz-*"))
    if not vmlinuzes:
        raise EnvironmentProblem("no Debian kernel in /boot: install linux-image-amd64 (scripts/install.sh does)")
    return vmlinuzes[-1].name.removeprefix("vmlinuz-")


def extract_vmlinux(vmlinuz: Path, dest: Path) -> bool:
    """Uncompress an xz bzImage into an ELF vmlinux: under TCG it boots ~3 s sooner (no in-guest decompression)."""
    blob = vmlinuz.read_bytes()
    start = blob.find(XZ_MAGIC)
    if start < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob[start:])
    except lzma.LZMAError:
        return False
    if not elf.startswith(b"\x7fELF"):
        return False
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.replace(dest)
    return True


def module_order(release: str, extra: tuple[str, ...] = ()) -> list[Path]:
    out = subprocess.run(
        ["modprobe", "-S", release, "--show-depends", "-a", *MODULES, *extra],
        check=True, capture_output=True, text=True,
    ).stdout
    seen: dict[Path, None] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod":
            seen.setdefault(Path(parts[1]), None)
    return list(seen)


def shared_libraries(program: str) -> list[Path]:
    out = subprocess.run(["ldd", program], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _inputs_digest(release: str, programs: list[str], extra: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256((INIT_SCRIPT + SHUTDOWN_SCRIPT).encode())
    if extra:  # only then: the agent and fio flavours keep their digests (and their cached initrds)
        h.update(",".join(extra).encode())
    for path in [Path(f"/boot/vmlinuz-{release}"), BUSYBOX, *map(Path, programs)]:
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _copy_into(root: Path, src: Path) -> None:
    dest = root / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(src.resolve(), dest)


def build(out_dir: Path, *, with_fio: bool = False, force: bool = False, balloon: bool = False,
          net: bool = False) -> GuestImage:
    """Build (or reuse) kernel + initramfs under out_dir; `balloon` adds the virtio balloon driver, `net` the
    virtio-net driver with iperf3 and sockperf (each its own flavour)."""
    release = kernel_release()
    extra = tuple(BALLOON_MODULES) if balloon else tuple(NET_MODULES) if net else ()
    programs = ([AGENT, FIO] if with_fio else [AGENT]) + (NET_TOOLS if net else [])
    for tool in programs[1:] if net else []:
        if not Path(tool).exists():
            raise EnvironmentProblem(f"{tool} is missing: install iperf3 and sockperf (scripts/install.sh)")
    if with_fio and not Path(FIO).exists():
        raise EnvironmentProblem("/usr/bin/fio is missing: install fio")
    if not Path(AGENT).exists():
        raise EnvironmentProblem("/usr/sbin/qemu-ga is missing: install qemu-guest-agent")
    if not BUSYBOX.exists():
        raise EnvironmentProblem("/bin/busybox is missing: install busybox-static")
    digest = _inputs_digest(release, programs, extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o755)  # QEMU may run as libvirt-qemu and must read the kernel and initrd
    # "initrd-<flavour>-*" globs below remove older builds of one flavour: no flavour name may prefix another's
    flavour = {(False, False): "agent", (True, False): "fio", (False, True): "balloon", (True, True): "fio+balloon"}[
        (with_fio, balloon)
    ] + ("+net" if net else "")
    initrd = out_dir / f"initrd-{flavour}-{digest}.cpio"
    vmlinux = out_dir / f"vmlinux-{release}"
    vmlinuz = Path(f"/boot/vmlinuz-{release}")
    if not vmlinux.exists() and not extract_vmlinux(vmlinuz, vmlinux):
        vmlinux = vmlinuz
    if initrd.exists() and not force:
        return GuestImage(kernel=vmlinux, initrd=initrd)

    stage = out_dir / f"stage-{digest}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "bin").mkdir(parents=True)
    (stage / "etc").mkdir()
    shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
    for program in programs:
        _copy_into(stage, Path(program))
        for lib in shared_libraries(program):
            _copy_into(stage, lib)
    order = []
    for module in module_order(release, extra):
        rel = module.relative_to(f"/lib/modules/{release}") if module.is_relative_to("/lib") else \
            module.relative_to(f"/usr/lib/modules/{release}")
        dest = stage / "lib" / "modules" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if module.suffix == ".xz":
            dest = dest.with_suffix("")
            dest.write_bytes(lzma.decompress(module.read_bytes()))
        else:
            shutil.copy2(module, dest)
        order.append(str(dest.relative_to(stage / "lib" / "modules")))
    (stage / "etc" / "modules.order").write_text("\n".join(order) + "\n")
    for path, text in ((stage / "init", INIT_SCRIPT), (stage / "sbin" / "shutdown", SHUTDOWN_SCRIPT)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)

    files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    tmp = initrd.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        subprocess.run([str(BUSYBOX), "cpio", "-o", "-H", "newc"], cwd=stage, input="\n".join(files).encode(),
                       stdout=fh, stderr=subprocess.DEVNULL, check=True)
    tmp.chmod(0o644)
    tmp.replace(initrd)
    shutil.rmtree(stage)
    for old in out_dir.glob(f"initrd-{flavour}-*.cpio"):
        if old != initrd:
            old.unlink()
    return GuestImage(kernel=vmlinux, initrd=initrd)
