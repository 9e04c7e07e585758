#!/bin/bash
# bench/run.sh — runv's performance figures on this machine, in one run (`make bench`).
#
# Prints: the machine; a bare QEMU boot of runv's kernel+initrd to /init with runv's own
# command line (the agent's probe mode prints RUNV-PROBE-OK and powers off), in turn with the
# direct kind's runs; `runv run <busybox bundle> true` for each factory kind (direct,
# template, cache) beside `runc run` on the same bundle, with ratios; host memory and CPU per idle pod (PSS and CPU time of
# every process of the pod); how many idle pods run at once (up to MAX_PODS); `runv exec` vs `runc exec`; the
# network beside runc (bench/network.sh: TCP throughput both ways, connect+request);
# port-forward's throughput beside the pod's address, and the cost of its steering; a pod
# with one container through containerd's CRI, handler runc vs runv vs runv with a pool.
# A kind (or exec) that does not work yet is skipped with the reason.
#
# Environment: RUNV (default: runv on PATH), RUNV_KERNEL, RUNV_INITRD (default: the
# installed ones), N (timed runs, default 10), IDLE_PODS (10), CPU_WINDOW (how long the
# idle pods' CPU use is measured, 30s), MAX_PODS (50),
# SKIP_MAX_PODS=1 to skip the slow capacity test, KINDS (default "direct template cache
# cache-direct cache-cold": cache is the default pool, refilled from a template;
# cache-direct pools directly booted VMs ("template":false); cache-cold is cache with
# --warm=false, to show what warming buys).
# Everything it starts it stops, and everything it creates it removes, also on ^C.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib.sh"
export PATH=/usr/local/go/bin:$PATH
RUNV=${RUNV:-$(command -v runv || echo "$repo/build/runv")}
# Absolute: the go benchmarks below run in their package's directory.
KERNEL=$(realpath -m "${RUNV_KERNEL:-/var/lib/runv/vmlinux}")
INITRD=$(realpath -m "${RUNV_INITRD:-/var/lib/runv/initrd.img}")
N=${N:-10}
IDLE_PODS=${IDLE_PODS:-10}
MAX_PODS=${MAX_PODS:-50}
KINDS=${KINDS:-direct template cache cache-direct cache-cold}
CACHE_SIZE=${CACHE_SIZE:-2}
CPU_WINDOW=${CPU_WINDOW:-30s}

# Short paths: pod sockets live under the state roots.
work=$(mktemp -d /tmp/rvb.XXXX)
runc_root=$work/runc
factory_pids=()

cleanup() {
	trap - EXIT INT TERM
	local r id
	for r in "$work"/root-*; do
		[ -d "$r" ] || continue
		for id in $("$RUNV" --root "$r" list -q 2>/dev/null); do
			"$RUNV" --root "$r" delete -f "$id" >/dev/null 2>&1
		done
		# Templates, and the tmpfs runv mounts for them.
		"$RUNV" --root "$r" manage remove-template --all >/dev/null 2>&1
	done
	if [ -d "$runc_root" ]; then
		for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
			runc --root "$runc_root" delete -f "$id" >/dev/null 2>&1
		done
	fi
	for p in "${factory_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	# Whatever is left that we started names $work on its command line.
	for p in $(grep -l -s -F "$work" /proc/[0-9]*/cmdline | cut -d/ -f3); do
		[ "$p" = $$ ] || kill -KILL "$p" 2>/dev/null
	done
	grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench: $*" >&2; exit 1; }
stop_factory() {
	for p in "${factory_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	factory_pids=()
}
# pool_full waits until the factory daemon's pool is full again (it answers when it is).
pool_full() { "$RUNV" --root "$work/root-$1" manage factory-daemon --status --wait --timeout 5m >/dev/null 2>&1; }
[ -x "$RUNV" ] || die "runv not found (run 'make install' or set RUNV)"
[ -f "$KERNEL" ] && [ -f "$INITRD" ] || die "kernel/initrd not found: $KERNEL $INITRD (run 'make install')"
command -v runc >/dev/null || die "runc not found (make deps)"

(cd "$repo" && go build -o "$work/benchtool" ./bench/benchtool) || die "cannot build bench/benchtool"
bt=$work/benchtool
(cd "$repo" && go run ./test/mkbundle "$work/true" true >/dev/null && go run ./test/mkbundle "$work/sleep" sleep 100000 >/dev/null) ||
	die "cannot build the busybox bundles"

median() { sed -n 's/.* median=\([0-9.]*\) .*/\1/p' | tail -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2fx", a/b; else print "n/a" }'; }

# rv ROOT-NAME FACTORY-ARGS... -- runv with the bench's kernel, initrd and a root of its own.
rv() {
	local r=$work/root-$1; shift
	"$RUNV" --root "$r" --kernel "$KERNEL" --initrd "$INITRD" "$@"
}

# factory_args KIND: sets fa to the global flags that select a factory kind (an array: the
# JSON must reach runv as one word, unglobbed).
factory_args() {
	case $1 in
	direct) fa=() ;;
	template) fa=(--factory '[{"template":true}]') ;;
	cache | cache-cold) fa=(--factory "[{\"cache\":$CACHE_SIZE}]") ;;
	cache-direct) fa=(--factory "[{\"template\":false,\"cache\":$CACHE_SIZE}]") ;;
	esac
}

# start_factory ROOT-NAME KIND WARM: starts a factory daemon (the pool of a cache kind) under
# the root and waits until its pool is full; fails with the reason on stdout. Not to be run
# in a subshell: it records the daemon in factory_pids.
start_factory() {
	local name=$1 warm=$3 fa
	factory_args "$2"
	mkdir -p "$work/root-$name"
	if ! rv "$name" "${fa[@]}" manage factory-daemon --help >/dev/null 2>&1; then
		echo "runv has no 'manage factory-daemon'"
		return 1
	fi
	# Not through rv: $! must be runv's pid, not a subshell's.
	"$RUNV" --root "$work/root-$name" --kernel "$KERNEL" --initrd "$INITRD" "${fa[@]}" \
		manage factory-daemon --warm="$warm" >"$work/factory-$name.log" 2>&1 &
	factory_pids+=($!)
	factory_serving "$work/root-$name" "${factory_pids[-1]}" "$work/factory-$name.log" || return 1
	pool_full "$name" || { echo "the pool did not fill: $(tail -3 "$work/factory-$name.log")"; return 1; }
}

# prepare KIND: anything a kind needs before pods use it; fails with the reason on stdout.
prepare() {
	local kind=$1 fa
	case $kind in
	cache | cache-direct) start_factory "$kind" "$kind" true || return 1 ;;
	cache-cold) start_factory cache-cold cache false || return 1 ;;
	esac
	factory_args "$kind"
	# One run proves the kind works here (and warms template creation, accel verdict, ...).
	local out
	if ! out=$(rv "$kind" "${fa[@]}" run --bundle "$work/true" "probe-$kind" 2>&1 </dev/null); then
		echo "$out" | tail -2
		return 1
	fi
}

echo "== machine"
echo "cpu:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(free -m | awk '/^Mem:/{print $2" MiB"}')"
echo "host:   $(uname -sr); $(. /etc/os-release; echo "$PRETTY_NAME")"
echo "kvm:    $([ -e /dev/kvm ] && echo "/dev/kvm present" || echo "no /dev/kvm") (runv's accel verdict decides: see below)"
# The QEMU runv runs by default (hypervisor.DefaultQEMU, resolved by the same code), named
# to runv and the bare boot alike so that both run this one binary.
qemu=$("$bt" qemu) || die "no QEMU for runv to run (benchtool said why above)"
export RUNV_QEMU=$qemu
echo "qemu:   $qemu: $("$qemu" --version | head -1)"
echo "runc:   $(runc --version | head -1)"
echo "runv:   $("$RUNV" --version)  kernel=$KERNEL initrd=$INITRD"
echo "date:   $(date -u +%FT%TZ)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; anything else running on the 2 cores skews every figure)"
echo

# The direct kind's runs alternate with the bare boots, run after run: its ratio to the bare
# boot is then taken under the same state of the machine, not minutes apart (the bare boot's
# median alone moved by 50 ms between runs of this script on an idle machine).
direct_label="runv run true [direct]"
between=()
direct_why=
if [[ " $KINDS " == *" direct "* ]]; then
	if prepare direct >"$work/why.txt"; then
		between=(-label "$direct_label" -- "$RUNV" --root "$work/root-direct" --kernel "$KERNEL" --initrd "$INITRD" run --bundle "$work/true" {})
	else
		direct_why=$(cat "$work/why.txt")
	fi
fi
# runv's direct boots restore the translations of the kind's first boot (hypervisor/qemu/
# boottranslations.go), saved by the direct kind's first run above: the bare boot is also
# timed restoring them, as the floor of that.
translations=()
tb=$(ls -t "${RUNV_TRANSLATIONS_DIR:-/run/runv-translations}"/*.tb 2>/dev/null | head -1 || true)
[ -n "$tb" ] && translations=(-translations "$tb")
echo "== bare QEMU boot of the same kernel+initrd, runv's command line, to /init (N=$N)${tb:+, also restoring the boot translations runv saved}${between:+, in turn with $direct_label}"
if ! "$bt" bareboot -kernel "$KERNEL" -initrd "$INITRD" -n "$N" -print-cmdline "${translations[@]}" "${between[@]}" >"$work/bare.txt" 2>&1; then
	cat "$work/bare.txt"
	die "the bare boot failed"
fi
grep -v -F "$direct_label" "$work/bare.txt"
grep -F "$direct_label" "$work/bare.txt" >"$work/run-direct.txt"
bare=$(grep '^bare qemu: start -> RUNV-PROBE-OK' "$work/bare.txt" | median)
bare_tb=$(grep '^bare qemu \[boot translations\]: start -> RUNV-PROBE-OK' "$work/bare.txt" | median || true)
echo

echo "== runc run <busybox bundle> true (N=$N)"
mkdir -p "$runc_root"
"$bt" repeat -n "$N" -label "runc run true" -- runc --root "$runc_root" run --bundle "$work/true" rc-{} | tee "$work/runc.txt"
runc_med=$(median <"$work/runc.txt")
echo

echo "== runv run <busybox bundle> true, by factory kind (N=$N)"
declare -A run_med
for kind in $KINDS; do
	if [ "$kind" = direct ]; then
		if [ -n "$direct_why" ]; then
			echo "direct: skipped: $direct_why"
		elif [ -s "$work/run-direct.txt" ]; then
			cat "$work/run-direct.txt"
			run_med[direct]=$(median <"$work/run-direct.txt")
			echo "  median = $(ratio "${run_med[direct]}" "$bare") the bare boot (run in turn with it, above), $(ratio "${run_med[direct]}" "$runc_med") runc run"
			if [ -n "$bare_tb" ]; then
				echo "  median = $(ratio "${run_med[direct]}" "$bare_tb") the bare boot restoring the same translations"
			fi
		fi
		continue
	fi
	if ! prepare "$kind" >"$work/why.txt"; then
		echo "$kind: skipped: $(cat "$work/why.txt")"
		case $kind in cache*) stop_factory ;; esac
		continue
	fi
	factory_args "$kind"
	pre=()
	# A pool serves a burst of its size at once, then refills at boot speed: time each run
	# with the pool full (the latency a pool gives), and separately back to back.
	case $kind in cache*) pre=(-pre "$RUNV --root $work/root-$kind manage factory-daemon --status --wait --timeout 5m") ;; esac
	if "$bt" repeat -n "$N" -label "runv run true [$kind]" "${pre[@]}" -- \
		"$RUNV" --root "$work/root-$kind" --kernel "$KERNEL" --initrd "$INITRD" "${fa[@]}" run --bundle "$work/true" {} \
		>"$work/run-$kind.txt" 2>&1; then
		cat "$work/run-$kind.txt"
		run_med[$kind]=$(median <"$work/run-$kind.txt")
		echo "  median = $(ratio "${run_med[$kind]}" "$bare") the bare boot, $(ratio "${run_med[$kind]}" "$runc_med") runc run"
	else
		echo "$kind: failed: $(tail -2 "$work/run-$kind.txt")"
	fi
	# Back to back: refills of template clones against refills of direct boots.
	if { [ "$kind" = cache ] || [ "$kind" = cache-direct ]; } && [ -n "${run_med[$kind]:-}" ]; then
		pool_full "$kind"
		"$bt" repeat -n "$N" -label "runv run true [$kind, back to back]" -- \
			"$RUNV" --root "$work/root-$kind" --kernel "$KERNEL" --initrd "$INITRD" "${fa[@]}" run --bundle "$work/true" b{} 2>&1 |
			tee "$work/b2b-$kind.txt"
		echo "  median = $(ratio "$(median <"$work/b2b-$kind.txt")" "${run_med[$kind]}") the pooled single pod"
	fi
	# Its pool would compete with what follows for the CPUs.
	case $kind in cache*) stop_factory ;; esac
done
echo

# idle_pods ROOT-NAME COUNT KIND: start COUNT detached `sleep` containers; prints how many
# started; the first failure's message goes to $work/idle-fail.txt.
idle_pods() {
	local name=$1 count=$2 i fa
	factory_args "$3"
	for ((i = 1; i <= count; i++)); do
		if ! rv "$name" "${fa[@]}" run -d --bundle "$work/sleep" "idle-$i" </dev/null >/dev/null 2>"$work/idle-fail.txt"; then
			echo $((i - 1))
			return
		fi
	done
	echo "$count"
}
stop_pods() {
	local r=$work/root-$1 id pids=()
	for id in $("$RUNV" --root "$r" list -q 2>/dev/null); do
		"$RUNV" --root "$r" delete -f "$id" >/dev/null 2>&1 &
		pids+=($!)
	done
	# Only these: a bare `wait` would wait for the factory daemons too.
	for p in "${pids[@]}"; do wait "$p"; done
}

pss_total() { sed -n 's/pss_total_kib=\([0-9]*\).*/\1/p'; }

echo "== host memory and CPU per idle pod ($IDLE_PODS idle pods running 'sleep' at once; PSS, and CPU over $CPU_WINDOW, of qemu + pod daemon + shim [+ holder])"
for kind in direct template cache cache-direct; do
	[ -n "${run_med[$kind]:-}" ] || { echo "$kind: skipped (the kind did not run above)"; continue; }
	name=mem-$kind
	base=0
	if [[ $kind == cache* ]]; then
		# The factory daemon and its full pool are a fixed cost: measured first, and taken
		# off; the pool is full again when the pods are measured.
		start_factory "$name" "$kind" true >"$work/why.txt" || { echo "$kind: skipped: $(cat "$work/why.txt")"; stop_factory; continue; }
		baseline=$("$bt" pss -match "$work/root-$name")
		base=$(echo "$baseline" | pss_total)
		echo "$kind: the factory daemon with its pool of $CACHE_SIZE VMs: $(awk -v t="$base" 'BEGIN{printf "%.1f MiB", t/1024}')  [$baseline]"
	fi
	n=$(idle_pods "$name" "$IDLE_PODS" "$kind")
	if [ "$n" -lt "$IDLE_PODS" ]; then
		echo "$kind: only $n pods started: $(tail -1 "$work/idle-fail.txt")"
	fi
	[[ $kind == cache* ]] && pool_full "$name"
	if [ "$n" -gt 0 ]; then
		line=$("$bt" pss -match "$work/root-$name")
		total=$(echo "$line" | pss_total)
		echo "$kind: $n pods: $(awk -v t="$total" -v b="$base" -v n="$n" 'BEGIN{printf "%.1f MiB per pod, %.1f MiB in all", (t-b)/n/1024, (t-b)/1024}')  [$line]"
		# What an idle pod costs in CPU (the RuntimeClass's overhead.podFixed.cpu):
		# everything of the root, the pool's daemon and VMs too for the cache kinds.
		line=$("$bt" cpu -match "$work/root-$name" -for "$CPU_WINDOW")
		echo "$kind: $n idle pods: $(echo "$line" | awk -v n="$n" '{sub("cpu_millicores=", "", $1); printf "%.1f millicores per pod", $1/n}')  [$line]"
	fi
	stop_pods "$name"
	[[ $kind == cache* ]] && stop_factory
done
echo

if [ "${SKIP_MAX_PODS:-0}" = 1 ]; then
	echo "== idle pods at once: skipped (SKIP_MAX_PODS=1)"
else
	echo "== idle pods at once, direct kind (up to $MAX_PODS)"
	start=$(date +%s)
	n=$(idle_pods max "$MAX_PODS" direct)
	if [ "$n" -lt "$MAX_PODS" ]; then
		echo "$n pods ran at once; pod $((n + 1)) failed: $(tail -1 "$work/idle-fail.txt")"
	else
		echo "all $n pods ran at once (the limit of the test); $(awk '/^MemAvailable/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) still available"
	fi
	line=$("$bt" pss -match "$work/root-max")
	echo "  $line; started in $(($(date +%s) - start)) s"
	stop_pods max
fi
echo

echo "== exec into a running container: runv exec vs runc exec (N=$N)"
if rv exec run -d --bundle "$work/sleep" ex1 </dev/null >/dev/null 2>"$work/exec-fail.txt"; then
	if rv exec exec ex1 true </dev/null >/dev/null 2>>"$work/exec-fail.txt"; then
		"$bt" repeat -n "$N" -label "runv exec true" -- "$RUNV" --root "$work/root-exec" exec ex1 true | tee "$work/rexec.txt"
	else
		echo "runv exec: skipped: $(tail -1 "$work/exec-fail.txt")"
	fi
	stop_pods exec
else
	echo "runv exec: skipped (cannot start the container): $(tail -1 "$work/exec-fail.txt")"
fi
runc --root "$runc_root" run -d --bundle "$work/sleep" rcx </dev/null >/dev/null 2>&1 &&
	"$bt" repeat -n "$N" -label "runc exec true" -- runc --root "$runc_root" exec rcx true | tee "$work/cexec.txt"
if [ -s "$work/rexec.txt" ] && [ -s "$work/cexec.txt" ]; then
	echo "  runv exec median = $(ratio "$(median <"$work/rexec.txt")" "$(median <"$work/cexec.txt")") runc exec"
fi
echo

RUNV=$RUNV RUNV_KERNEL=$KERNEL RUNV_INITRD=$INITRD "$here/network.sh" || echo "network: failed (see above)"
echo

echo "== port-forward: 32 MiB from a server in the pod, through 127.0.0.1 of its namespace vs its address (median of 5 each)"
(cd "$repo" && RUNV_PF_BENCH=1 RUNV_BINARY=$RUNV RUNV_KERNEL=$KERNEL RUNV_INITRD=$INITRD \
	go test -count=1 -tags integration -timeout 20m -run '^TestPortForwardThroughput$' -v ./test/integration/ 2>&1) |
	grep -E '^(port-forward bench|--- FAIL|FAIL)' || echo "skipped: the port-forward measurement did not run"
echo

echo "== port-forward steering on the host: connect+accept+close on a namespace's 127.0.0.1, plain listener vs sk_lookup-steered (go benchmark)"
(cd "$repo" && go test -count=1 -run '^$' -bench 'LoopbackConnect' -benchtime 20000x ./network/ 2>&1) |
	grep -E '^(Benchmark|FAIL|---)' || echo "skipped: the steering benchmark did not run"
echo

echo "== a VM from the factory until its agent answers: template clone vs cold boot (go benchmark, N=$N)"
(cd "$repo" && RUNV_TEST_KERNEL=$KERNEL RUNV_TEST_INITRD=$INITRD go test -tags integration -run '^$' \
	-bench 'VMUntilAgentAnswers' -benchtime "${N}x" ./factory/ 2>&1) | grep -E '^(Benchmark|FAIL|---)' ||
	echo "skipped: the factory benchmark did not run"
echo
echo "== CRI: RunPodSandbox + CreateContainer + StartContainer (busybox), handlers runc, runv, runv with a pool of 2 (N=$N)"
# containerd's CRI with runv's shim next to $RUNV (test/cri, TestCRIStartTiming).
(cd "$repo" && RUNV_CRI_BENCH=1 RUNV_CRI_BENCH_N=$N RUNV_CLIENT_RUNTIME=$RUNV RUNV_KERNEL=$KERNEL RUNV_INITRD=$INITRD \
	RUNV_CRI_KEEP_LOG=$work/cri-containerd.log \
	go test -count=1 -tags integration -timeout 30m -run '^TestCRIStartTiming$' -v ./test/cri/ 2>&1) |
	grep -E '^(cri start|--- FAIL|FAIL|cri tests:)' || echo "skipped: the CRI timing did not run"
# Where a pod start goes, phase by phase (containerd's debug log with the shim's lines).
for h in runc runv-pool; do
	[ -s "$work/cri-containerd.log" ] || break
	echo "-- CRI start of handler $h, phase by phase (medians)"
	"$bt" crilog -log "$work/cri-containerd.log" -pods "timing-$h-" || true
done
echo
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
