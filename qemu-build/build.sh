#!/bin/bash
# Builds runv's QEMU: Debian's own QEMU 7.2 source (the version of the installed
# qemu-system-x86, Debian bookworm's qemu-system-x86_64), configured for x86_64-softmmu with only what runv
# uses (runv-devices.mak: microvm and q35, virtio over mmio and PCI, virtio-serial, -9p, -rng,
# -net; TCG and KVM, virtfs, seccomp), and caches it outside the repository.
#
#   qemu-build/build.sh OUT KERNEL INITRD
#
# OUT: where to copy the binary ("" to only print its path); KERNEL, INITRD: runv's guest,
# booted to profile the build (below).
#
# Why: Debian's binary maps 51 shared libraries and registers every device of every board at
# its start, which a pooled VM's refill pays each time, and is not optimised for what
# dominates a VM's CPU under TCG, translating the guest's code (docs/performance.md, "QEMU
# built for runv, stop 20"). The translator, the devices and the migration format are
# Debian's 7.2, with runv's patches (patches/*.patch, applied in order to a copy of the
# source): 0001 lets a VM template be saved with the guest's 9p share mounted, an opt-in
# device property (x-migrate-fids) that a template's command line sets; 0002 saves the code
# TCG translated for a template's warm-up and restores it into each clone (properties of
# the TCG accelerator, x-tb-snapshot-save and -load, hypervisor/qemu/translations.go).
#
# Cache: $RUNV_CACHE (default /var/cache/runv)/qemu/<key>/qemu-system-x86_64, where <key>
# hashes this script and buildcache/cache.sh, the device list, the patches and the source version, so a
# change of any of them rebuilds and an unchanged tree never does. Progress goes to stderr,
# the path to stdout. Needs Debian's source index (a deb-src line; `make deps` adds one) and
# the build dependencies `make deps` installs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
devices=$here/runv-devices.mak
# The source of the qemu-system-x86 installed (`make deps` installs it first), not a pinned
# version: Debian's archive keeps only a release's current point version, so a pinned one
# fails on a fresh machine once the next is published. A binNMU (+bN) is a rebuild of the
# same source. QEMU_VERSION overrides it.
version=${QEMU_VERSION:-$(dpkg-query -W -f '${Version}' qemu-system-x86 2>/dev/null || true)}
version=${version%+b[0-9]*}
if [ -z "$version" ]; then
  echo "qemu: no qemu-system-x86 installed to take the source version from ('make deps' installs it; QEMU_VERSION names one)" >&2
  exit 1
fi
cache=${RUNV_CACHE:-/var/cache/runv}
patches=("$here"/patches/*.patch)
key=$(cat "$0" "$here/../buildcache/cache.sh" "$devices" "${patches[@]}" <(echo "source=$version") | sha256sum | cut -c1-16)
dir=$cache/qemu/$key
out=${1:-}
kernel=${2:-}
initrd=${3:-}

. "$here/../buildcache/cache.sh"
cache_open qemu "$dir" qemu-system-x86_64 "$out" "qemu source $version, key $key"

src=$cache/qemu/src-${version#*:}
if [ ! -f "$src/.extracted" ]; then
  log "fetching Debian's qemu source $version"
  rm -rf "$src"; mkdir -p "$src"
  if ! (cd "$src" && apt-get source --download-only "qemu=$version" >/dev/null 2>"$src/fetch.log"); then
    cat "$src/fetch.log" >&2
    echo "qemu: cannot fetch Debian's source of qemu $version: it needs a deb-src line ('make deps' adds one) and that version in the archive (QEMU_VERSION overrides it)" >&2
    exit 1
  fi
  log "extracting (with Debian's patches)"
  # (apt checked the files against the archive's signed index; dpkg-source warns that it
  # cannot check the .dsc's own signature without Debian's keyring: its output goes to a log.)
  dpkg-source -x "$src"/qemu_"${version#*:}".dsc "$src/tree" >"$src/extract.log" 2>&1 || {
    cat "$src/extract.log" >&2; echo "qemu: dpkg-source failed; see above" >&2; exit 1; }
  touch "$src/.extracted"
fi

build=$dir/build
profile=$dir/profile
tree=$dir/src
trap 'rm -rf "$build" "$profile" "$tree" "$dir/benchtool" "$dir/instrumented"' EXIT
# A copy of the source to patch (hard links: patch replaces the files it changes, and the
# extracted tree stays Debian's for other keys).
rm -rf "$tree"
cp -al "$src/tree" "$tree"
for p in "${patches[@]}"; do
  log "applying $(basename "$p")"
  patch -d "$tree" -p1 -s --no-backup-if-mismatch <"$p" || { echo "qemu: $p does not apply to qemu $version" >&2; exit 1; }
done
rm -f "$tree/configs/devices/x86_64-softmmu/runv.mak"
cp "$devices" "$tree/configs/devices/x86_64-softmmu/runv.mak"
jobs=${JOBS:-$(nproc)}
start=$(date +%s)

# build PASS FLAGS: configures and builds in $build (the same path both passes: the profile's
# files are named after the objects' paths). Debian's compiler flags (dpkg-buildflags: -O2,
# the stack protector, _FORTIFY_SOURCE, relro; QEMU adds PIE and -z now itself) plus FLAGS.
# The prefix is not /usr: firmware is then looked up at the absolute paths below (Debian's
# qemu-system-data, seabios and ipxe), wherever the binary is installed, not relative to it.
build() {
  local pass=$1 flags=$2
  rm -rf "$build"; mkdir -p "$build"
  log "$pass: configuring x86_64-softmmu with runv's devices only"
  (cd "$build" && "$tree/configure" \
    --prefix=/usr/local/lib/runv-qemu --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
    --extra-cflags="-O2 -fstack-protector-strong -Wformat -Werror=format-security -Wdate-time -D_FORTIFY_SOURCE=2 $flags" \
    --extra-ldflags="-Wl,-z,relro -Wl,--as-needed $flags" \
    --with-pkgversion="Debian $version, built for runv" \
    --target-list=x86_64-softmmu --without-default-features --without-default-devices \
    --with-devices-x86_64=runv --disable-user --disable-docs --disable-install-blobs \
    --with-git-submodules=ignore --audio-drv-list="" \
    --enable-tcg --enable-kvm --enable-virtfs --enable-attr --enable-cap-ng --enable-seccomp \
    --enable-fdt=system >"$build/configure.log" 2>&1) || {
    tail -20 "$build/configure.log" >&2; echo "qemu: configure failed; see above" >&2; exit 1; }
  log "$pass: building with ninja -j$jobs (about 1 270 steps, 2-4 minutes on 2 cores)"
  ninja -C "$build" -j"$jobs" qemu-system-x86_64 2>&1 | {
    while IFS= read -r line; do
      case $line in
        \[*00/*) log "$pass: ${line%% *} $(( $(date +%s) - start ))s" ;;
        *error:*|FAILED*) echo "$line" >&2 ;;
      esac
    done
  }
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "qemu: build failed; see above" >&2; exit 1; }
}

# Profile-guided: TCG translating the guest's code is most of a VM's QEMU CPU, and a build
# optimised for the paths our guest's boot takes spends ~9 % less CPU on a bare boot
# (docs/performance.md). The first pass is instrumented and boots runv's guest (bare, with
# runv's command line: bench/benchtool) a few times, microvm and q35; the second uses that profile.
# Code the boots never ran is optimised as usual (-fprofile-partial-training).
if [ ! -f "$kernel" ] || [ ! -f "$initrd" ]; then
  echo "qemu: the profile needs runv's guest to boot: kernel $kernel and initrd $initrd ('make kernel initrd')" >&2
  exit 1
fi
rm -rf "$profile"; mkdir -p "$profile"
build instrumented "-fprofile-generate=$profile -fprofile-update=prefer-atomic"
log "profiling: booting the guest with the instrumented binary"
# Run from outside the build tree: in it, QEMU looks for firmware in the tree's qemu-bundle.
cp "$build/qemu-system-x86_64" "$dir/instrumented"
(cd "$here/.." && go build -o "$dir/benchtool" ./bench/benchtool)
for machine in microvm microvm microvm q35; do
  RUNV_QEMU=$dir/instrumented "$dir/benchtool" bareboot -machine "$machine" -kernel "$kernel" -initrd "$initrd" -n 2 >/dev/null || {
    echo "qemu: the instrumented QEMU did not boot runv's guest ($machine)" >&2; exit 1; }
done
[ -n "$(ls "$profile")" ] || { echo "qemu: the profiling boots wrote no profile to $profile" >&2; exit 1; }
build optimised "-fprofile-use=$profile -fprofile-partial-training -Wno-missing-profile"
cp "$build/qemu-system-x86_64" "$dir/qemu-system-x86_64.tmp" && mv "$dir/qemu-system-x86_64.tmp" "$dir/qemu-system-x86_64"
rm -rf "$build" "$profile" "$tree" "$dir/benchtool" "$dir/instrumented"
log "built in $(( $(date +%s) - start ))s: $dir/qemu-system-x86_64"
deliver
