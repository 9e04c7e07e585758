#!/bin/bash
# bench/coldfloor.sh — the floor of what a direct `runv run true` adds to the bare boot: the
# same kernel and QEMU command line as `benchtool bareboot` (runv's), but an initramfs of
# busybox alone whose /init, right after the bare boot's marker, does in a shell what a
# pod's start and its first container need from the guest kernel — lo up, the 9p share's
# mount, a cgroup with its controllers, new mount/uts/ipc/pid namespaces, proc, a /dev
# tmpfs with devpts and device nodes, sysfs, pivot_root, exec of busybox `true`, its exit —
# with no agent, no protocol and no host daemon. Each step prints a console line, and
# benchtool prints them with the host's milliseconds since QEMU started (-timeline), so the
# steps' costs in a cold guest (everything translated for the first time, as in a direct
# boot) read as differences. Compare with bench/breakdown.sh's timeline of a direct run.
#
# usage: bench/coldfloor.sh [N]          (RUNV_KERNEL: the guest kernel, /var/lib/runv/vmlinux)
# Needs a static busybox at /bin/busybox (busybox-static) and cpio.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
KERNEL=${RUNV_KERNEL:-/var/lib/runv/vmlinux}
N=${1:-5}
command -v cpio >/dev/null || { echo "coldfloor: cpio not found (apt-get install cpio)" >&2; exit 1; }
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' ||
	{ echo "coldfloor: /bin/busybox is not a static busybox (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d /tmp/rvcoldfloor.XXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,mnt,ctr}
cp /bin/busybox "$root/bin/busybox"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
# The bare boot's part, as the agent's root step: proc, sys, /dev.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
export PATH=/bin
c=/dev/ttyS0
echo RUNV-PROBE-OK > $c
ip link set lo up
echo "FLOOR lo up" > $c
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 runvshare /mnt
echo "FLOOR 9p share mounted" > $c
mount -t cgroup2 none /sys/fs/cgroup
echo "+cpu +memory +pids +cpuset +io" > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/c1
echo "FLOOR cgroup made, its controllers on" > $c
# Not in runv's path (its rootfs is the 9p share's): a rootfs on a tmpfs to pivot into.
mount -t tmpfs tmpfs /ctr
mkdir -p /ctr/bin /ctr/proc /ctr/dev /ctr/sys /ctr/old
cp /bin/busybox /ctr/bin/busybox
echo "FLOOR (rootfs prepared: not part of the floor)" > $c
unshare -m -u -i -p -f /bin/busybox sh -c '
echo $$ > /sys/fs/cgroup/c1/cgroup.procs
mount --make-rprivate /
mount -t proc proc /ctr/proc
mount -t tmpfs -o mode=755 tmpfs /ctr/dev
mkdir /ctr/dev/pts
mount -t devpts -o newinstance,ptmxmode=0666 devpts /ctr/dev/pts
mknod -m 666 /ctr/dev/null c 1 3
mknod -m 666 /ctr/dev/zero c 1 5
mknod -m 666 /ctr/dev/urandom c 1 9
mount -t sysfs -o ro sysfs /ctr/sys
hostname ctr
echo "FLOOR namespaces, cgroup join and the mounts" > /dev/ttyS0
cd /ctr && pivot_root . old && umount -l /old
exec /bin/busybox true
'
echo "FLOOR container exited" > $c
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null) >"$work/floor.cpio"
cd "$repo"
PATH=/usr/local/go/bin:$PATH go build -o "$work/benchtool" ./bench/benchtool
"$work/benchtool" bareboot -kernel "$KERNEL" -initrd "$work/floor.cpio" -n "$N" -timeline |
	grep -E '^bare qemu: start -> RUNV|RUNV-PROBE-OK|FLOOR'
