#!/bin/bash
# bench/ab.sh — `runv run <busybox bundle> true` with two guest initramfs images, timed
# alternately (A, B, A, B, ...) so that both see the same load: for a change inside the
# guest (the agent, the exec helper) measured against the build before it.
#
#   INITRD_A=/tmp/base/build/initrd.img INITRD_B=build/initrd.img KIND=cache bench/ab.sh
#
# For a change on the host side (e.g. how a template is made), RUNV_A and RUNV_B name the
# runv binary of each side (default: RUNV for both):
#
#   RUNV_A=/tmp/base/build/runv RUNV_B=build/runv INITRD_A=build/initrd.img INITRD_B=build/initrd.img KIND=template bench/ab.sh
#
# Environment: INITRD_A, INITRD_B (required), RUNV (default: build/runv), RUNV_KERNEL
# (default build/vmlinux), KIND (cache: a pool of 2 warmed template clones per side, each run
# with its pool full, as bench/run.sh times it; template; direct), N (runs per side, 10).
# Prints the median, min and max of each side and the load before and after. Everything it
# starts (pods, the pools' daemons, templates) it stops and removes, also on ^C.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10}
KIND=${KIND:-cache}
RUNV=${RUNV:-$repo/build/runv}
KERNEL=$(realpath -m "${RUNV_KERNEL:-$repo/build/vmlinux}")
declare -A INITRD=([A]=$(realpath -m "${INITRD_A:?set INITRD_A}") [B]=$(realpath -m "${INITRD_B:?set INITRD_B}"))
declare -A RUNVS=([A]=$(realpath -m "${RUNV_A:-$RUNV}") [B]=$(realpath -m "${RUNV_B:-$RUNV}"))
for f in "${RUNVS[A]}" "${RUNVS[B]}" "$KERNEL" "${INITRD[A]}" "${INITRD[B]}"; do
	[ -e "$f" ] || { echo "ab.sh: $f not found (make build)" >&2; exit 1; }
done
case $KIND in
cache) fa=(--factory '[{"cache":2}]') ;;
template) fa=(--factory '[{"template":true}]') ;;
direct) fa=() ;;
*) echo "ab.sh: KIND must be cache, template or direct" >&2; exit 1 ;;
esac
work=$(mktemp -d /tmp/rvab.XXXX)
pids=()
cleanup() {
	trap - EXIT INT TERM
	local ab id p
	for ab in A B; do
		for id in $("${RUNVS[$ab]}" --root "$work/root-$ab" list -q 2>/dev/null); do
			"${RUNVS[$ab]}" --root "$work/root-$ab" delete -f "$id" >/dev/null 2>&1
		done
		"${RUNVS[$ab]}" --root "$work/root-$ab" manage remove-template --all >/dev/null 2>&1
	done
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
(cd "$repo" && go run ./test/mkbundle "$work/true" true >/dev/null) || exit 1
rv() { local ab=$1; shift; "${RUNVS[$ab]}" --root "$work/root-$ab" --kernel "$KERNEL" --initrd "${INITRD[$ab]}" "${fa[@]}" "$@"; }
full() { [ "$KIND" = cache ] || return 0; "${RUNVS[$1]}" --root "$work/root-$1" manage factory-daemon --status --wait --timeout 5m >/dev/null 2>&1; }
for ab in A B; do
	mkdir -p "$work/root-$ab"
	if [ "$KIND" = cache ]; then
		# Not through rv: $! must be runv's pid, not a subshell's.
		"${RUNVS[$ab]}" --root "$work/root-$ab" --kernel "$KERNEL" --initrd "${INITRD[$ab]}" "${fa[@]}" \
			manage factory-daemon --warm=true >"$work/factory-$ab.log" 2>&1 &
		pids+=($!)
		for ((i = 0; i < 300; i++)); do
			[ -S "$work/root-$ab/@factory/factory.sock" ] && break
			kill -0 "${pids[-1]}" 2>/dev/null || { echo "ab.sh: factory daemon $ab exited: $(tail -3 "$work/factory-$ab.log")" >&2; exit 1; }
			sleep 0.1
		done
	fi
	full "$ab"
	# One run each proves the side works (and makes the template of the template kind).
	rv "$ab" run --bundle "$work/true" "probe-$ab" </dev/null >/dev/null 2>&1 || { echo "ab.sh: side $ab does not run a container" >&2; exit 1; }
done
echo "ab.sh: $KIND, N=$N; A=${RUNVS[A]} ${INITRD[A]} B=${RUNVS[B]} ${INITRD[B]}"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) ($(date -u +%T))"
for ((i = 0; i < N; i++)); do
	for ab in A B; do
		full "$ab"
		t0=$(date +%s%N)
		rv "$ab" run --bundle "$work/true" "$ab$i" </dev/null >/dev/null 2>&1 || echo "ab.sh: run $ab$i failed"
		t1=$(date +%s%N)
		echo "$ab $(((t1 - t0) / 1000))" >>"$work/times"
	done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) ($(date -u +%T))"
for ab in A B; do
	grep "^$ab " "$work/times" | sort -n -k2 | awk -v ab="$ab" '{v[NR] = $2 / 1000}
		END { n = NR; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		      printf "%s: median %.1f ms  min %.1f  max %.1f  (n=%d)\n", ab, m, v[1], v[n], n }'
done
