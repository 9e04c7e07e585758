#!/bin/bash
# bench/burstcpu.sh — where a burst's time goes: the machine's CPU over back-to-back pods.
#
# usage: bench/burstcpu.sh        (N pods a burst, default 10; ROUNDS bursts, default 3)
# Starts a factory daemon with a warmed pool of 2 (what bench/run.sh's "cache, back to back"
# uses), waits until its pool is full, then times N `runv run true` one after the other and
# reads the machine's busy and total jiffies (/proc/stat) around the burst: each pod's wall
# time, their median, how busy the 2 cores were and the CPU (all processes) per pod. A burst
# whose cores are nearly all busy is paced by the CPU a pod costs, not by waiting.
# RUNV, RUNV_KERNEL, RUNV_INITRD as for bench/run.sh. Everything it starts it stops, also on ^C.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
RUNV=${RUNV:-$(command -v runv || echo "$repo/build/runv")}
KERNEL=${RUNV_KERNEL:-/var/lib/runv/vmlinux}
INITRD=${RUNV_INITRD:-/var/lib/runv/initrd.img}
N=${N:-10}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d /tmp/rvburst.XXXX)
R=$work/root
fa=(--root "$R" --kernel "$KERNEL" --initrd "$INITRD" --factory '[{"cache":2}]')
factory_pid=
cleanup() {
	trap - EXIT INT TERM
	if [ -n "$factory_pid" ]; then
		kill -TERM "$factory_pid" 2>/dev/null && wait "$factory_pid" 2>/dev/null
	fi
	umount "$R/@templates" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

# busy_total: the machine's busy and total jiffies (iowait counts as idle).
busy_total() {
	local _ u n s i io irq sirq st
	read -r _ u n s i io irq sirq st _ </proc/stat
	echo $((u + n + s + irq + sirq)) $((u + n + s + i + io + irq + sirq + st))
}

(cd "$repo" && go run ./test/mkbundle "$work/true" true >/dev/null) || exit 1
"$RUNV" "${fa[@]}" manage factory-daemon --warm=true >"$work/factory.log" 2>&1 &
factory_pid=$!
factory_serving "$R" "$factory_pid" "$work/factory.log" || exit 1
for round in $(seq "$ROUNDS"); do
	if ! "$RUNV" "${fa[@]}" manage factory-daemon --status --wait --timeout 5m >/dev/null; then
		echo "the pool did not fill: $(tail -2 "$work/factory.log")"
		exit 1
	fi
	read -r b0 t0 < <(busy_total)
	times=()
	for k in $(seq "$N"); do
		a=$(date +%s%N)
		"$RUNV" "${fa[@]}" run --bundle "$work/true" "r$round-$k" >/dev/null || exit 1
		times+=($((($(date +%s%N) - a) / 100000)))
	done
	read -r b1 t1 < <(busy_total)
	median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 20}')
	walls=$(printf '%s\n' "${times[@]}" | awk '{printf "%d ", $1/10}')
	echo "burst $round: pods ${walls}ms; median $median ms; the cores $(((b1 - b0) * 100 / (t1 - t0)))% busy;" \
		"CPU per pod $(((b1 - b0) * 1000 / $(getconf CLK_TCK) / N)) ms"
done
