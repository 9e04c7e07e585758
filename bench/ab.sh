#!/bin/bash
# bench/ab.sh — `runv run <busybox bundle> true` with two builds, timed alternately (A, B, A,
# B, ...) so that both see the same load: for a change measured against the build before it.
# Each side has its own runv (the CLI, pod daemon, factory daemon and holders: a host-side
# change) and its own guest initramfs (a change inside the guest: the agent, the exec helper).
#
#   INITRD_A=/tmp/base/build/initrd.img INITRD_B=build/initrd.img KIND=cache bench/ab.sh
#   RUNV_A=/tmp/base/build/runv RUNV_B=build/runv PHASES=1 KIND=cache bench/ab.sh
#
# Environment: RUNV_A, RUNV_B (default: RUNV, default build/runv), INITRD_A, INITRD_B
# (default: RUNV_INITRD, default build/initrd.img), RUNV_KERNEL (default build/vmlinux), KIND
# (cache: a pool of 2 warmed template clones per side, each run with its pool full, as
# bench/run.sh times it; template; direct), N (runs per side, 10), PHASES=1 (runs with
# --debug, follows each pod daemon's log, and adds the medians of the phases: ms since the
# CLI started until the daemon serves, the pod is ready, the container is created in the
# guest, its process exited, the last container was deleted, the pod stopped, and the
# spans between them), BURST=1 (KIND=cache: then ROUNDS bursts per side, in turn, as
# bench/run.sh's "cache, back to back": the pool full, one untimed run, N runs one after
# another; each burst's median and its ratio to the side's single median, and the pool's
# warm-ups from its factory daemon's log: light or full, wall time, QEMU's CPU time; what
# each pod got, warmth and wait; with cgroup v1's cpuacct, each burst's CPU per pod on the
# pool's side and on the pods'),
# ROUNDS (2). Prints the median, min and max of each side and the load before and after. Everything it starts (pods, the pools' daemons, templates) it stops and removes,
# also on ^C.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
N=${N:-10}
KIND=${KIND:-cache}
PHASES=${PHASES:-0}
BURST=${BURST:-0}
ROUNDS=${ROUNDS:-2}
RUNV=${RUNV:-$repo/build/runv}
KERNEL=$(realpath -m "${RUNV_KERNEL:-$repo/build/vmlinux}")
INITRD=${RUNV_INITRD:-$repo/build/initrd.img}
declare -A RUNVS=([A]=$(realpath -m "${RUNV_A:-$RUNV}") [B]=$(realpath -m "${RUNV_B:-$RUNV}"))
declare -A INITRD=([A]=$(realpath -m "${INITRD_A:-$INITRD}") [B]=$(realpath -m "${INITRD_B:-$INITRD}"))
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
	done
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	if [ -n "$cg" ]; then
		echo $$ >"$cghome/cgroup.procs"
		for g in "$cg"/rvab-$$-*; do
			[ -d "$g" ] || continue
			for _ in $(seq 50); do rmdir "$g" 2>/dev/null && break; sleep 0.1; done # a holder may still be exiting
		done
	fi
	# After the factory daemons: their templates, and the tmpfs runv mounted for them.
	for ab in A B; do
		"${RUNVS[$ab]}" --root "$work/root-$ab" manage remove-template --all >/dev/null 2>&1
	done
	grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$work"
}
# BURST=1 with cgroup v1's cpuacct: the CPU of each burst, on the pool's side (the factory
# daemon, its holders, every QEMU: refills, warm-ups and the pods' VMs) and on the pods'
# (the CLIs and their pod daemons), from a cpuacct group each.
cg=
if [ "$BURST" = 1 ] && [ -w /sys/fs/cgroup/cpuacct/cgroup.procs ]; then
	cg=/sys/fs/cgroup/cpuacct
	cghome=$cg$(awk -F: '$2 ~ /(^|,)cpuacct(,|$)/ {print $3}' /proc/self/cgroup) # where this shell goes back to
	mkdir "$cg/rvab-$$-A" "$cg/rvab-$$-B" "$cg/rvab-$$-pods" || cg=
fi
trap cleanup EXIT INT TERM
(cd "$repo" && go run ./test/mkbundle "$work/true" true >/dev/null) || exit 1
rv() { local ab=$1; shift; "${RUNVS[$ab]}" --root "$work/root-$ab" --kernel "$KERNEL" --initrd "${INITRD[$ab]}" "${fa[@]}" "$@"; }
fdbg=()
[ "$BURST" = 1 ] && fdbg=(--debug)
full() { [ "$KIND" = cache ] || return 0; "${RUNVS[$1]}" --root "$work/root-$1" manage factory-daemon --status --wait --timeout 5m >/dev/null 2>&1; }
for ab in A B; do
	mkdir -p "$work/root-$ab"
	if [ "$KIND" = cache ]; then
		# Not through rv: $! must be runv's pid (the subshell execs it).
		(
			[ -n "$cg" ] && echo $BASHPID >"$cg/rvab-$$-$ab/cgroup.procs"
			exec "${RUNVS[$ab]}" "${fdbg[@]}" --root "$work/root-$ab" --kernel "$KERNEL" --initrd "${INITRD[$ab]}" "${fa[@]}" \
				manage factory-daemon --warm=true >"$work/factory-$ab.log" 2>&1
		) &
		pids+=($!)
		why=$(factory_serving "$work/root-$ab" "${pids[-1]}" "$work/factory-$ab.log") || { echo "ab.sh: side $ab: $why" >&2; exit 1; }
	fi
	full "$ab"
	# One run each proves the side works (and makes the template of the template kind).
	rv "$ab" run --bundle "$work/true" "probe-$ab" </dev/null >/dev/null 2>&1 || { echo "ab.sh: side $ab does not run a container" >&2; exit 1; }
done
# follow ROOT OUT: copies the daemon log of the pod that appears under ROOT into OUT as it
# grows (the pod's directory goes with the pod).
follow() {
	local l=
	for _ in $(seq 5000); do
		l=$(ls "$1"/@pods/*/daemon.log 2>/dev/null | head -1)
		[ -n "$l" ] && break
		sleep 0.002
	done
	[ -n "$l" ] && exec tail -n +1 -F "$l" >"$2" 2>/dev/null
}
# phases T0 TOTAL-MS < daemon log: one line of the phases' times (ms since T0, ns since the
# epoch) for the summary below.
phases() {
	local t0s
	t0s=$(date -u -d "@$(($1 / 1000000000)).$(printf %09d $(($1 % 1000000000)))" +%H:%M:%S.%N | awk -F: '{printf "%.6f", $1*3600 + $2*60 + $3}')
	awk -v t0="$t0s" -v tot="$2" '
		function at() { match($0, /time=[^ ]*/); split(substr($0, RSTART + 5, RLENGTH - 5), a, /[T:Z]/); return (a[2]*3600 + a[3]*60 + a[4] - t0) * 1000 }
		/msg="pod daemon serving"/ {sv = at()} /msg="pod ready"/ {rd = at()} /msg="container created in the guest"/ {cr = at()}
		/msg="process exited"/ {ex = at()} /msg="last container deleted/ {ld = at()} /msg="pod stopped"/ {st = at()}
		END {printf "%.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", tot, sv, rd, cr, ex, ld, st}'
}
dbg=()
[ "$PHASES" = 1 ] && dbg=(--debug)
echo "ab.sh: $KIND, N=$N; A=${RUNVS[A]} ${INITRD[A]}; B=${RUNVS[B]} ${INITRD[B]}"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) ($(date -u +%T))"
for ((i = 0; i < N; i++)); do
	for ab in A B; do
		full "$ab"
		if [ "$PHASES" = 1 ]; then
			follow "$work/root-$ab" "$work/daemon.log" &
			fpid=$!
		fi
		t0=$(date +%s%N)
		rv "$ab" "${dbg[@]}" run --bundle "$work/true" "$ab$i" </dev/null >/dev/null 2>&1 || echo "ab.sh: run $ab$i failed"
		t1=$(date +%s%N)
		echo "$ab $(((t1 - t0) / 1000))" >>"$work/times"
		if [ "$PHASES" = 1 ]; then
			sleep 0.2 # the tail copies what the daemon wrote last
			kill "$fpid" 2>/dev/null
			wait "$fpid" 2>/dev/null
			phases "$t0" $(((t1 - t0) / 1000000)) <"$work/daemon.log" >>"$work/phases-$ab"
		fi
	done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) ($(date -u +%T))"
for ab in A B; do
	grep "^$ab " "$work/times" | sort -n -k2 | awk -v ab="$ab" '{v[NR] = $2 / 1000}
		END { n = NR; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		      printf "%s: median %.1f ms  min %.1f  max %.1f  (n=%d)\n", ab, m, v[1], v[n], n }'
done
if [ "$PHASES" = 1 ]; then
	med() { sort -n -k"$1" | awk -v c="$1" '{v[NR] = $c} END {printf "%s", v[int((NR + 1) / 2)]}'; }
	echo "phases, medians (ms since the CLI started): run returned, daemon serving, pod ready, created in the guest, process exited, last container deleted, pod stopped"
	echo "  and the spans: ready-serving, created-ready (NEWCONTAINER), exited-created (start, run, exit), deleted-exited, stopped-deleted (the pod's end), returned-stopped,"
	echo "  returned-exited (the guest's exit report to the CLI's return)"
	for ab in A B; do
		f=$work/phases-$ab
		awk '{print $3-$2, $4-$3, $5-$4, $6-$5, $7-$6, $1-$7, $1-$5}' "$f" >"$f.spans"
		printf "%s: " "$ab"
		for c in 1 2 3 4 5 6 7; do printf "%s " "$(med "$c" <"$f")"; done
		printf "| "
		for c in 1 2 3 4 5 6 7; do printf "%s " "$(med "$c" <"$f.spans")"; done
		echo
	done
fi
# median < "side µs" lines: the median in ms.
median_ms() { sort -n -k2 | awk '{v[NR] = $2 / 1000} END {n = NR; printf "%.1f", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2}'; }
if [ "$BURST" = 1 ] && [ "$KIND" = cache ]; then
	for ((r = 0; r < ROUNDS; r++)); do
		for ab in A B; do
			full "$ab"
			rv "$ab" run --bundle "$work/true" "w$ab$r" </dev/null >/dev/null 2>&1 || echo "ab.sh: run w$ab$r failed"
			load=$(cut -d' ' -f1 /proc/loadavg)
			[ -n "$cg" ] && echo $$ >"$cg/rvab-$$-pods/cgroup.procs" && pool0=$(cat "$cg/rvab-$$-$ab/cpuacct.usage") && pods0=$(cat "$cg/rvab-$$-pods/cpuacct.usage")
			for ((i = 0; i < N; i++)); do
				t0=$(date +%s%N)
				rv "$ab" run --bundle "$work/true" "b$ab$r-$i" </dev/null >/dev/null 2>&1 || echo "ab.sh: run b$ab$r-$i failed"
				t1=$(date +%s%N)
				echo "$ab $(((t1 - t0) / 1000))" >>"$work/burst-$ab-$r"
			done
			single=$(grep "^$ab " "$work/times" | median_ms)
			burst=$(median_ms <"$work/burst-$ab-$r")
			cpu=
			if [ -n "$cg" ]; then
				cpu="; CPU per pod: pool side $((($(cat "$cg/rvab-$$-$ab/cpuacct.usage") - pool0) / N / 1000000)) ms, pod side $((($(cat "$cg/rvab-$$-pods/cpuacct.usage") - pods0) / N / 1000000)) ms"
				echo $$ >"$cghome/cgroup.procs"
			fi
			echo "$ab burst $r (load $load): $(awk '{printf "%.0f ", $2 / 1000}' "$work/burst-$ab-$r")ms; median $burst ms, $(awk -v a="$burst" -v b="$single" 'BEGIN{printf "%.2f", a / b}')x the single pod's $single ms$cpu"
		done
	done
	for ab in A B; do
		echo "$ab warm-ups (light, wall, QEMU CPU):"
		sed -n 's/.*msg="pooled vm warmed".* light=\([a-z]*\) duration=\([^ ]*\) qemu_cpu=\([^ ]*\).*/\1 \3/p' "$work/factory-$ab.log" |
			awk '{n[$1]++; c[$1] = c[$1] " " $2} END {for (k in n) printf "  light=%s n=%d cpu:%s\n", k, n[k], c[k]}'
		echo "  cold hand-outs: $(grep -c 'handing out a vm before its warm-up' "$work/factory-$ab.log")"
		# What each pod got (a runv that logs it): its VM's warmth and how long it waited.
		grep -q 'msg="handed out a pooled VM".*warmth=' "$work/factory-$ab.log" &&
			echo "  hand-outs (warmth:waited ms): $(sed -n 's/.*msg="handed out a pooled VM".* warmth=\([a-z]*\) waited=\([^ ]*\).*/\1 \2/p' "$work/factory-$ab.log" |
				awk '{d = $2; if (d ~ /ms$/) v = d + 0; else if (d ~ /µs$/) v = 0; else if (d ~ /s$/) v = d * 1000; else v = 0; printf "%s:%.0f ", $1, v}')"
	done
fi
