#!/bin/bash
# bench/breakdown.sh — where the time of one `runv run <bundle> true` goes.
#
# usage: bench/breakdown.sh [FACTORY-ARGS...]     e.g. bench/breakdown.sh --factory '[{"cache":2}]'
# Runs create, start and delete separately (as `runv run` does internally) with --debug,
# keeps the pod daemon's log and the guest console before the pod directory goes, and
# prints a timeline: host milliseconds since the CLI started, then the pod daemon's and the
# guest agent's own lines, and QEMU's CPU time until create returned (the guest's work,
# which load inflates less than wall times). RUNV, RUNV_KERNEL, RUNV_INITRD, ROOT (state root; default: a
# fresh temporary one) as for bench/run.sh. A factory daemon for the cache kind must already
# run under ROOT.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
RUNV=${RUNV:-$(command -v runv || echo "$repo/build/runv")}
KERNEL=${RUNV_KERNEL:-/var/lib/runv/vmlinux}
INITRD=${RUNV_INITRD:-/var/lib/runv/initrd.img}
work=$(mktemp -d /tmp/rvbd.XXXX)
ROOT=${ROOT:-$work/root}
tailpid=
cleanup() {
	[ -n "$tailpid" ] && kill "$tailpid" 2>/dev/null
	"$RUNV" --root "$ROOT" delete -f bd >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT
export PATH=/usr/local/go/bin:$PATH
(cd "$repo" && go run ./test/mkbundle "$work/true" true >/dev/null) || exit 1
rv() { "$RUNV" --root "$ROOT" --kernel "$KERNEL" --initrd "$INITRD" --debug "$@"; }
now() { date +%s%N; }
t0=$(now)
ms() { echo $(( ($(now) - t0) / 1000000 )); }
rv "$@" create --bundle "$work/true" bd </dev/null >/dev/null 2>"$work/create.err" || { cat "$work/create.err"; exit 1; }
tc=$(ms)
pod=$(ls -d "$ROOT"/@pods/*/ | head -1)
# QEMU's CPU time so far (its threads' time on a CPU, schedstat): the guest's work until
# create returned, which, unlike the wall times, a loaded machine does not inflate much.
qcpu=$(cat "$(ls -d "$pod"/vm/qemu.pid 2>/dev/null)" 2>/dev/null | xargs -I{} sh -c 'cat /proc/{}/task/*/schedstat' 2>/dev/null | awk '{s += $1} END {if (NR) printf "%.0f", s / 1e6}')
# The pod directory goes with the last container: follow its files from the start.
tail -n +1 -F "$pod/daemon.log" >"$work/daemon.log" 2>/dev/null &
tailpid=$!
rv start bd >/dev/null 2>&1
ts=$(ms)
cp "$pod/vm/console.log" "$work/console.log" 2>/dev/null
rv delete bd >/dev/null 2>&1   # waits for the exit, as run does after its Wait
td=$(ms)
kill "$tailpid"; tailpid=
echo "host (ms since the CLI started): create returned $tc, start returned $ts, delete returned $td"
[ -n "$qcpu" ] && echo "qemu CPU time until create returned: $qcpu ms"
echo "--- pod daemon (--debug), milliseconds since the CLI started"
# The CLI's start as seconds of the UTC day, the unit of the daemon's timestamps.
t0s=$(date -u -d "@$((t0 / 1000000000)).$(printf %09d $((t0 % 1000000000)))" +%H:%M:%S.%N | awk -F: '{printf "%.6f", $1*3600 + $2*60 + $3}')
awk -v t0="$t0s" '
	match($0, /time=[^ ]*/) {
		ts = substr($0, RSTART + 5, RLENGTH - 5)
		split(ts, a, /[T:Z]/); s = a[2]*3600 + a[3]*60 + a[4]
		line = $0; sub(/^time=[^ ]* level=[a-z]* /, "", line)
		gsub(/ pod=[^ ]*/, "", line)
		printf "%7.0f  %s\n", (s - t0) * 1000, substr(line, 1, 150)
	}' "$work/daemon.log" | grep -v 'qemu command line'
echo "--- guest console (seconds of guest uptime)"
cat "$work/console.log"
