#!/bin/bash
# bench/breakdown.sh — where the time of one `runv run <bundle> true` goes.
#
# usage: bench/breakdown.sh [FACTORY-ARGS...]     e.g. bench/breakdown.sh --factory '[{"cache":2}]'
# Runs `runv --debug run` (what bench/run.sh times), follows the pod daemon's log and the
# guest console while the pod lives, and prints a timeline: milliseconds since the CLI
# started of the CLI's and the pod daemon's lines, then the guest agent's own (guest
# uptime). STEPS=1 runs create, start and delete as separate commands instead (as a client
# such as docker does: create then spawns a shim and connects the pod's network at start).
# QEMU's CPU time, the guest's work with TCG's translation (which a loaded machine inflates
# much less than the wall times), is on the daemon's "qemu exited" line (cpu=, all of the
# pod), and with STEPS=1 also printed as it was when create returned (schedstat). Its sys=
# part is the host kernel's, mostly page faults (minflt=): on a host whose memory is
# handed back to its own hypervisor, that part varies by 20-300 ms from run to run
# (docs/performance.md, "Template clone, stop 12"); the rest is the guest's.
# RUNV, RUNV_KERNEL, RUNV_INITRD, ROOT (state root; default: a fresh temporary one) as for
# bench/run.sh. With a "cache" policy and no factory daemon serving under ROOT, one is
# started (warmed) and its pool awaited before the run; it is stopped at the end. Whatever
# it started it stops, also on ^C: the container, the factory daemon, the templates and
# their tmpfs, its temporary directory.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib.sh"
RUNV=${RUNV:-$(command -v runv || echo "$repo/build/runv")}
KERNEL=${RUNV_KERNEL:-/var/lib/runv/vmlinux}
INITRD=${RUNV_INITRD:-/var/lib/runv/initrd.img}
STEPS=${STEPS:-0}
work=$(mktemp -d /tmp/rvbd.XXXX)
own_root=0
[ -z "${ROOT:-}" ] && own_root=1
ROOT=${ROOT:-$work/root}
tailpids=()
factory_pid=
cleanup() {
	trap - EXIT INT TERM
	for p in "${tailpids[@]}"; do kill "$p" 2>/dev/null; done
	"$RUNV" --root "$ROOT" delete -f bd >/dev/null 2>&1
	if [ -n "$factory_pid" ]; then
		kill -TERM "$factory_pid" 2>/dev/null && wait "$factory_pid" 2>/dev/null
	fi
	if [ "$own_root" = 1 ]; then
		# A template kind made a template under our root, on a tmpfs runv mounted for it.
		"$RUNV" --root "$ROOT" manage remove-template --all >/dev/null 2>&1
		grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export PATH=/usr/local/go/bin:$PATH
(cd "$repo" && go run ./test/mkbundle "$work/true" true >/dev/null) || exit 1
rv() { "$RUNV" --root "$ROOT" --kernel "$KERNEL" --initrd "$INITRD" --debug "$@"; }

# A pool to take the VM from.
if [[ "$*" == *'"cache"'* ]] && [ ! -S "$ROOT/@factory/factory.sock" ]; then
	"$RUNV" --root "$ROOT" --kernel "$KERNEL" --initrd "$INITRD" "$@" manage factory-daemon --warm=true >"$work/factory.log" 2>&1 &
	factory_pid=$!
	factory_serving "$ROOT" "$factory_pid" "$work/factory.log" 60 || exit 1
fi
if [ -S "$ROOT/@factory/factory.sock" ]; then
	"$RUNV" --root "$ROOT" manage factory-daemon --status --wait --timeout 5m >/dev/null || { echo "the pool did not fill"; exit 1; }
fi

# follow_pod: once the pod's directory exists, copy its daemon log and console as they grow
# (the directory goes with the pod).
follow_pod() {
	local pod=
	for _ in $(seq 5000); do
		pod=$(ls -d "$ROOT"/@pods/*/ 2>/dev/null | head -1)
		[ -n "$pod" ] && [ -e "$pod/daemon.log" ] && break
		sleep 0.002
	done
	[ -n "$pod" ] || return
	tail -n +1 -F "$pod/daemon.log" >"$work/daemon.log" 2>/dev/null &
	tail -n +1 -F "$pod/vm/console.log" >"$work/console.log" 2>/dev/null &
	wait
}
# qemu_cpu PID: milliseconds QEMU's threads have run so far.
qemu_cpu() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || :; } | awk '{s += $1} END {if (NR) printf "%.0f\n", s / 1e6}'; }
follow_pod &
tailpids+=($!)

now() { date +%s%N; }
t0=$(now)
ms() { echo $(( ($(now) - t0) / 1000000 )); }
if [ "$STEPS" = 1 ]; then
	rv "$@" create --bundle "$work/true" bd </dev/null >/dev/null 2>"$work/cli.log" || { cat "$work/cli.log"; exit 1; }
	tc=$(ms)
	qcpu_created=$(qemu_cpu "$(cat "$(ls -d "$ROOT"/@pods/*/ | head -1)"/vm/qemu.pid 2>/dev/null)")
	rv start bd >/dev/null 2>>"$work/cli.log"
	ts=$(ms)
	rv delete bd >/dev/null 2>>"$work/cli.log" # waits for the exit, as run does after its Wait
	td=$(ms)
	summary="create returned $tc, start returned $ts, delete returned $td"
else
	rv "$@" run --bundle "$work/true" bd </dev/null >/dev/null 2>"$work/cli.log" || { cat "$work/cli.log"; exit 1; }
	summary="run returned $(ms)"
fi
# The tails copy what is there: give them a moment to reach the end of files that stopped.
sleep 0.3
pkill -P "${tailpids[0]}" 2>/dev/null
echo "host (ms since the CLI started): $summary"
[ -n "${qcpu_created:-}" ] && echo "qemu CPU time until create returned: $qcpu_created ms"
echo "--- CLI and pod daemon (--debug), milliseconds since the CLI started"
# The CLI's start as seconds of the UTC day, the unit of the logs' timestamps.
t0s=$(date -u -d "@$((t0 / 1000000000)).$(printf %09d $((t0 % 1000000000)))" +%H:%M:%S.%N | awk -F: '{printf "%.6f", $1*3600 + $2*60 + $3}')
cat "$work/cli.log" "$work/daemon.log" 2>/dev/null | awk -v t0="$t0s" '
	match($0, /time=[^ ]*/) {
		ts = substr($0, RSTART + 5, RLENGTH - 5)
		split(ts, a, /[T:Z]/); s = a[2]*3600 + a[3]*60 + a[4]
		line = $0; sub(/^time=[^ ]* level=[a-z]* /, "", line)
		gsub(/ pod=[^ ]*/, "", line)
		# The boot steps of the agent (READY, "boot: agent ready") in full, the rest cut short.
		printf "%7.0f  %s\n", (s - t0) * 1000, substr(line, 1, line ~ /boot_steps=/ ? 400 : 150)
	}' | grep -v 'qemu command line' | sort -s -n
echo "--- guest console (seconds of guest uptime)"
cat "$work/console.log" 2>/dev/null
