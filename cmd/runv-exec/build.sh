#!/bin/sh
# cmd/runv-exec/build.sh OUT [CFLAGS...] — builds the exec helper, static, as the Makefile
# and the tests do.
#
# With musl (musl-gcc, Debian's musl-tools) when it is installed: the helper is exec'd for
# every container and exec, and a static glibc program runs ~1500 translated blocks of
# start-up code (IRELATIVE relocations, tunables, the vDSO lookup, stdio and malloc set-up)
# before main; under TCG, in a cold guest, that is most of the helper's start
# (docs/performance.md, "Direct boot, stop 12"). musl's start-up is a few dozen blocks.
# musl-gcc's include path has no kernel headers: the helper's linux/ and asm/ ones come
# from the system's, through a directory of links next to OUT.
set -eu
out=$1
shift
src=$(dirname "$0")/runv-exec.c
if command -v musl-gcc >/dev/null 2>&1; then
	kh=$(dirname "$out")/.runv-exec-kernel-headers
	mkdir -p "$kh"
	multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
	ln -sfn /usr/include/linux "$kh/linux"
	ln -sfn /usr/include/asm-generic "$kh/asm-generic"
	ln -sfn "/usr/include/$multiarch/asm" "$kh/asm"
	exec musl-gcc -static -O2 -Wall -Wextra -Werror -isystem "$kh" "$@" -o "$out" "$src"
fi
echo "runv-exec: musl-gcc not found (apt-get install musl-tools): building with glibc, whose static start-up costs a cold guest several ms per container" >&2
exec "${CC:-cc}" -static -O2 -Wall -Wextra -Werror "$@" -o "$out" "$src"
