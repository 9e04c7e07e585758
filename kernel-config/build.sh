#!/bin/bash
# Builds the runv guest kernel (uncompressed PVH vmlinux) from Debian's linux-source-6.1 with
# runv.config merged on top of tinyconfig, and caches it outside the repository.
#
#   kernel-config/build.sh [OUT]      OUT: where to copy the vmlinux (default: print its path)
#
# Cache: $RUNV_CACHE (default /var/cache/runv)/kernel/<key>/vmlinux, where <key> hashes the
# fragment, the patches (patches/*.patch, applied in name order), the recipe version below
# and the kernel source package's version, so a change of any of them rebuilds and an
# unchanged tree never does. Progress goes to stderr; the cached path goes to stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/runv.config
patches=("$here"/patches/*.patch)
[ -e "${patches[0]}" ] || patches=()
cache=${RUNV_CACHE:-/var/cache/runv}
src_tar=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -1 || true)
if [ -z "$src_tar" ]; then
  echo "kernel: /usr/src/linux-source-6.1.tar.xz not found: apt-get install linux-source-6.1 (or run 'make deps')" >&2
  exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %Y "$src_tar")
# Bump when the recipe below changes in a way that changes the output.
recipe=2
key=$(cat "$fragment" ${patches[@]+"${patches[@]}"} <(echo "recipe=$recipe source=$src_version") | sha256sum | cut -c1-16)
dir=$cache/kernel/$key
out=${1:-}

. "$here/../buildcache/cache.sh"
cache_open kernel "$dir" vmlinux "$out" "linux-source $src_version, fragment key $key"

work=$cache/kernel/src-$src_version
if [ ! -f "$work/.extracted" ]; then
  log "extracting $src_tar"
  rm -rf "$work"; mkdir -p "$work"
  tar -C "$work" --strip-components=1 -xf "$src_tar"
  touch "$work/.extracted"
fi
build=$dir/build
rm -rf "$build"; mkdir -p "$build"
trap 'rm -rf "$build" "$dir/src"' EXIT
if [ ${#patches[@]} -gt 0 ]; then
  # The extracted tree is shared by every key: patch a copy of it whose files are hard links
  # (patch writes a patched file anew, so the shared tree keeps its own).
  log "patching a copy of the source: ${patches[*]##*/}"
  rm -rf "$dir/src"
  cp -al "$work" "$dir/src"
  for p in "${patches[@]}"; do
    patch -s -p1 -d "$dir/src" <"$p" || { echo "kernel: $p does not apply to linux-source $src_version" >&2; exit 1; }
  done
  work=$dir/src
fi
log "configuring (tinyconfig + $(basename "$fragment"))"
make -s -C "$work" O="$build" ARCH=x86_64 tinyconfig >/dev/null
"$work/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
make -s -C "$work" O="$build" ARCH=x86_64 olddefconfig >/dev/null
missing=$(grep -E '^CONFIG_' "$fragment" | while read -r l; do grep -qx "$l" "$build/.config" || echo "$l"; done)
if [ -n "$missing" ]; then
  echo "kernel: these fragment options did not survive olddefconfig (a dependency is missing):" >&2
  echo "$missing" >&2
  exit 1
fi
# About 2,100 objects are compiled for this config; show a running count and a percentage.
jobs=${JOBS:-$(nproc)}
log "building vmlinux with make -j$jobs (about 6 minutes on 2 cores)"
start=$(date +%s)
make -C "$work" O="$build" ARCH=x86_64 -j"$jobs" vmlinux 2>&1 | {
  n=0
  while IFS= read -r line; do
    case $line in
      *" CC "*|*" AS "*|*" LD "*|*" AR "*)
        n=$((n+1))
        if [ $((n % 100)) -eq 0 ]; then
          pct=$((n * 100 / 2100)); [ $pct -le 99 ] || pct=99
          log "$n objects (~$pct%), $(( $(date +%s) - start ))s"
        fi ;;
      *rror*) echo "$line" >&2 ;;
    esac
  done
}
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "kernel: build failed; see above" >&2; exit 1; }
cp "$build/vmlinux" "$dir/vmlinux.tmp" && mv "$dir/vmlinux.tmp" "$dir/vmlinux"
cp "$build/.config" "$dir/config"
rm -rf "$build" "$dir/src"
log "built in $(( $(date +%s) - start ))s: $dir/vmlinux"
deliver
