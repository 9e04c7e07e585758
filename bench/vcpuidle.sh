#!/bin/bash
# bench/vcpuidle.sh — when the guest's only vCPU waits during one `runv run <bundle> true`.
#
# usage: bench/vcpuidle.sh [FACTORY-ARGS...]   (environment as for bench/breakdown.sh)
# Runs bench/breakdown.sh while `perf record` takes the host's sched_switch events, then prints
# breakdown's timeline and the vCPU thread's time off the host CPU between the pod daemon's
# lines: asleep (the thread blocked: the guest halted, idle, or the vCPU waiting for QEMU's
# main loop) or preempted (runnable, another host thread on the core). Work the guest could
# move into a wait (a boot step overlapping a host round trip) can save at most the time
# asleep after the marker: docs/performance.md, "The guest's steps around the container,
# stop 17". The vCPU thread is the QEMU thread that ran longest; times are milliseconds
# since QEMU's first event, aligned with the daemon's "qemu started" line (within ~1 ms).
# Needs perf and root. It stops the perf it started, also on ^C.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/rvidle.XXXX)
perf_pid=
cleanup() {
	trap - EXIT INT TERM
	if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null; fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
command -v perf >/dev/null || { echo "vcpuidle: perf is not installed"; exit 1; }

perf record -k mono -e sched:sched_switch -a -o "$work/perf.data" >"$work/perf.log" 2>&1 &
perf_pid=$!
# perf is recording once it wrote its header.
for _ in $(seq 100); do [ -s "$work/perf.data" ] && break; sleep 0.05; done
"$here/breakdown.sh" "$@" >"$work/breakdown.txt" 2>&1
rc=$?
kill -INT "$perf_pid" && wait "$perf_pid"
perf_pid=
cat "$work/breakdown.txt"
[ "$rc" = 0 ] || exit "$rc"
qemu=$(grep -o 'msg="qemu started".*pid=[0-9]*' "$work/breakdown.txt" | grep -o '[0-9]*$' | head -1)
started=$(grep 'msg="qemu started"' "$work/breakdown.txt" | awk '{print $1; exit}')
[ -n "$qemu" ] || { echo "vcpuidle: no \"qemu started\" line (a pooled VM? this measures a direct boot)"; exit 1; }
# The marks: the daemon's lines after QEMU's start, in ms since it.
marks=$(awk -v s="$started" '$1 > s && match($0, /msg="(boot: agent connected|pod ready|process started|process exited)"/) {
	printf "%s%d=%s", (n++ ? ";" : ""), $1 - s, substr($0, RSTART + 5, RLENGTH - 6) }' "$work/breakdown.txt")
echo "--- the vCPU thread off the host CPU (ms since QEMU's first event; intervals > 0.2 ms)"
perf script -i "$work/perf.data" -F pid,tid,time,trace 2>/dev/null | awk -v P="$qemu" -v M="$marks" '
	{
		split($1, pt, "/"); t = $2; sub(/:$/, "", t); t += 0
		if (pt[1] == P && first == "") first = t
		if (!match($0, /prev_pid=[0-9]+/)) next
		pp = substr($0, RSTART + 9, RLENGTH - 9)
		match($0, /prev_state=[^ ]+/); ps = substr($0, RSTART + 11, RLENGTH - 11)
		match($0, /next_pid=[0-9]+/); np = substr($0, RSTART + 9, RLENGTH - 9)
		n++; T[n] = t; PP[n] = pp; PS[n] = ps; NP[n] = np
		if (pt[1] == P) mine[pt[2]] = 1
	}
	END {
		for (i = 1; i <= n; i++) {
			if (PP[i] in on) { run[PP[i]] += T[i] - on[PP[i]]; delete on[PP[i]] }
			on[NP[i]] = T[i]
		}
		for (x in mine) if (x != P && run[x] > best) { best = run[x]; v = x }
		k = split(M, mk, ";")
		for (j = 1; j <= k; j++) { split(mk[j], a, "="); at[j] = a[1] + 0; name[j] = a[2] }
		name[0] = "QEMU started"
		for (i = 1; i <= n; i++) {
			if (PP[i] == v) { out = T[i]; st = PS[i] }
			else if (NP[i] == v && out != "") {
				s = (out - first) * 1000; d = (T[i] - out) * 1000; out = ""
				w = 0; for (j = 1; j <= k; j++) if (s >= at[j]) w = j
				if (st ~ /^[SD]/) slept[w] += d; else pre[w] += d
				if (d > 0.2) printf "%.1f+%.2f%s ", s, d, (st ~ /^[SD]/ ? "asleep" : "preempted")
			}
		}
		printf "\nvCPU thread %s ran %.0f ms\n", v, best * 1000
		for (j = 0; j <= k; j++)
			printf "%6d  from %-32s asleep %7.2f ms, preempted %7.2f ms\n", (j ? at[j] : 0), name[j], slept[j], pre[j]
	}'
