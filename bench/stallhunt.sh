#!/bin/bash
# bench/stallhunt.sh — hunt the rare boot whose guest agent answers late (docs/reliability.md,
# "A boot whose agent answers late"): P workers each run R direct boots in a row, a
# `runv run -d` of a busybox `sleep` then `delete -f`, and every boot slower than SLOW
# seconds is caught while it waits: its daemon log, console, QEMU's threads (wchan, state,
# CPU time), the descriptors QEMU's main thread polls and the control socket's queues go to
# $OUT/stall-<pod>.txt. One line per boot in $OUT/summary.
#
#   P=5 R=100 SLOW=12 bench/stallhunt.sh            # ~500 boots; a stall was seen about once in 1000
#   NETNS=1 P=5 R=40 bench/stallhunt.sh             # pods with a network namespace, as CNI makes it
#
# NETNS=1 gives each pod a network namespace of its own with a veth whose peer stays in the
# host's namespace (addresses 10.236.W.1 and .2 of the worker W, as the fault matrix's
# sandboxes have): `runv run -d` then also connects the pod's network (ConnectNetwork,
# SETUPNETWORK) before it starts the container. In both modes a run still waiting after
# SLOW seconds is caught, whatever step it waits in (also its events, the pod daemon's and
# the CLI's threads and sockets), and once it has waited QUIT seconds, before `runv
# start`'s 1-minute deadline ends it, its pod daemon's goroutines are dumped (SIGQUIT, which
# ends the pod): its log goes to $OUT/stall-<pod>.quit.log, the CLI's output to .cli.log.
# This mode caught the guest without a timer (docs/reliability.md, stop 18) about once in
# 150 pods at load 12-17.
#
# Environment: P (workers, 4), R (boots per worker, 50), SLOW (seconds, 12), NETNS (0),
# QUIT (seconds, 50; 0: never), DEBUG (1: the pods and CLIs log at debug level), OUT
# (results, a new /tmp/stallhunt.XXXX), RUNV (default build/runv), RUNV_KERNEL, RUNV_INITRD
# (build/). Needs jq and iproute2.
# Everything it starts it deletes, also on ^C; the results stay in $OUT.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
P=${P:-4} R=${R:-50} SLOW=${SLOW:-12} NETNS=${NETNS:-0} QUIT=${QUIT:-50}
debug=()
[ "${DEBUG:-0}" = 1 ] && debug=(--debug)
RUNV=${RUNV:-$repo/build/runv}
KERNEL=$(realpath -m "${RUNV_KERNEL:-$repo/build/vmlinux}")
INITRD=$(realpath -m "${RUNV_INITRD:-$repo/build/initrd.img}")
for f in "$RUNV" "$KERNEL" "$INITRD"; do
	[ -e "$f" ] || { echo "stallhunt.sh: $f not found (make build)" >&2; exit 1; }
done
OUT=${OUT:-$(mktemp -d /tmp/stallhunt.XXXX)}
work=$(mktemp -d /tmp/stallhunt-root.XXXX)
root=$work/root
pids=()
# nsname is worker w's network namespace (NETNS=1), hostif its veth's end on the host.
nsname() { echo "rvsh-$$-w$1"; }
hostif() { echo "rvsh$$w$1"; }

# podnetdel removes worker w's veth (both ends at once) and namespace.
podnetdel() {
	ip link del "$(hostif "$1")" 2>/dev/null
	ip netns del "$(nsname "$1")" 2>/dev/null
}

cleanup() {
	trap - EXIT INT TERM
	touch "$work/stop"
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	wait 2>/dev/null
	# A run in flight goes on without its worker: it is waited for (its own deadlines
	# bound it), so that the deletes below find its container.
	local f t
	for f in "$work"/inflight/*; do
		[ -e "$f" ] || continue
		for ((t = 0; t < 1800; t++)); do
			[ -e "/proc/$(cat "$f")" ] || break
			sleep 0.1
		done
	done
	for id in $("$RUNV" --root "$root" list -q 2>/dev/null); do
		"$RUNV" --root "$root" delete -f "$id" >/dev/null 2>&1
	done
	for ((w = 0; w < P; w++)); do podnetdel "$w"; done
	rm -rf "$work"
	echo "stallhunt.sh: results in $OUT"
}
trap cleanup EXIT INT TERM
mkdir -p "$root" "$OUT" "$work/inflight"
(cd "$repo" && go run ./test/mkbundle "$work/bundle" sleep 100000 >/dev/null) || exit 1
rv() { "$RUNV" --root "$root" --kernel "$KERNEL" --initrd "$INITRD" "${debug[@]}" "$@"; }

# podnet makes worker w's namespace afresh: a veth, eth0 inside, addressed and routed.
podnet() {
	local w=$1 ns h
	ns=$(nsname "$w") h=$(hostif "$w")
	ip netns add "$ns" &&
		ip -n "$ns" link set lo up &&
		ip link add "$h" mtu 1400 type veth peer name eth0 netns "$ns" &&
		ip addr add "10.236.$((w + 1)).1/24" dev "$h" &&
		ip -n "$ns" addr add "10.236.$((w + 1)).2/24" dev eth0 &&
		ip link set "$h" up && ip -n "$ns" link set eth0 up &&
		ip -n "$ns" route add default via "10.236.$((w + 1)).1"
}

# pollset prints the descriptors a thread waiting in ppoll(2)/poll(2) watches, with their
# events: a socket QEMU does not read is missing, or listed without POLLIN (0x1).
pollset() {
	python3 - "$1" <<'EOF'
import os, struct, sys
pid = sys.argv[1]
for tid in sorted(os.listdir(f"/proc/{pid}/task")):
    try:
        sc = open(f"/proc/{pid}/task/{tid}/syscall").read().split()
        if sc[0] not in ("7", "271"):  # poll, ppoll
            continue
        fds, n = int(sc[1], 16), int(sc[2], 16)
        with open(f"/proc/{pid}/mem", "rb") as m:
            m.seek(fds)
            raw = m.read(8 * n)
    except (OSError, IndexError, ValueError):
        continue
    out = []
    for i in range(n):
        fd, ev, _ = struct.unpack("iHH", raw[8 * i:8 * i + 8])
        try:
            what = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            what = "?"
        out.append(f"{fd}:{what}:events={ev:#x}")
    print(f"thread {tid} polls", " ".join(out))
EOF
}

# slowpods lists the pod directories to catch: a pod not ready after SLOW seconds, and the
# pod of a run that has been waiting for SLOW seconds (its record names it once created).
slowpods() {
	local d m f id pd
	for d in "$root"/@pods/p-*; do
		[ -f "$d/daemon.log" ] || continue
		grep -q "pod ready" "$d/daemon.log" 2>/dev/null && continue
		m=$(stat -c %Y "$d/daemon.log" 2>/dev/null) || continue
		[ $(($(date +%s) - m)) -ge "$SLOW" ] && echo "$d"
	done
	for f in "$work"/inflight/*; do
		[ -e "$f" ] || continue
		m=$(stat -c %Y "$f" 2>/dev/null) || continue
		[ $(($(date +%s) - m)) -ge "$SLOW" ] || continue
		id=$(basename "$f")
		pd=$(grep -o '"podDir": *"[^"]*"' "$root/$id/state.json" 2>/dev/null | cut -d'"' -f4)
		[ -n "$pd" ] && echo "$pd"
	done
}

# quitslow dumps the goroutines of the pod daemon of a run waiting for QUIT seconds into
# its daemon.log (Go's SIGQUIT: the daemon exits), once.
quitslow() {
	local f m id pid pd cli
	for f in "$work"/inflight/*; do
		[ -e "$f" ] || continue
		m=$(stat -c %Y "$f" 2>/dev/null) || continue
		[ $(($(date +%s) - m)) -ge "$QUIT" ] || continue
		id=$(basename "$f")
		[ -e "$work/quit-$id" ] && continue
		cli=$(cat "$f" 2>/dev/null) || continue
		pid=$(jq -r '.daemon.pid // empty' "$root/$id/state.json" 2>/dev/null)
		[ -n "$pid" ] || continue
		touch "$work/quit-$id"
		pd=$(jq -r '.podDir' "$root/$id/state.json" 2>/dev/null)
		echo "stallhunt.sh: $id waited ${QUIT}s: its pod daemon's goroutines go to $OUT/stall-$(basename "$pd").quit.log" >&2
		# The run deletes the pod, and its log, as soon as the daemon is gone: the log and
		# the CLI's output are followed from before the signal (tail keeps reading a
		# deleted file) until the daemon, and the CLI, have exited.
		tail -s 0.1 --pid="$pid" -c +1 -f "$pd/daemon.log" >"$OUT/stall-$(basename "$pd").quit.log" 2>/dev/null &
		tail -s 0.1 --pid="$cli" -c +1 -f "$work/$id.out" >"$OUT/stall-$(basename "$pd").cli.log" 2>/dev/null &
		kill -QUIT "$pid"
	done
}

# catch dumps every pod slowpods lists, once.
catch() {
	while [ ! -e "$work/stop" ]; do
		[ "$QUIT" -gt 0 ] && quitslow
		for d in $(slowpods | sort -u); do
			f=$OUT/stall-$(basename "$d").txt
			[ -e "$f" ] && continue
			q=$(cat "$d/vm/qemu.pid" 2>/dev/null)
			{
				echo "at $(date -u +%T.%N), load $(cut -d' ' -f1-3 /proc/loadavg)"
				echo "--- daemon.log"; cat "$d/daemon.log"
				echo "--- events.log"; cat "$d/events.log"
				echo "--- console.log"; cat "$d/vm/console.log"
				echo "--- qemu $q: thread comm state utime stime wchan, then 2 s later"
				for pass in 1 2; do
					for t in /proc/$q/task/*; do
						echo "$(basename "$t") $(cut -d' ' -f2,3,14,15 "$t/stat") $(cat "$t/wchan")"
					done
					[ $pass = 1 ] && sleep 2
				done
				dp=$(jq -r --arg d "$d" 'select(.podDir == $d) | .daemon.pid' "$root"/*/state.json 2>/dev/null | head -1)
				echo "--- pod daemon: thread comm state utime stime wchan"
				for t in /proc/$dp/task/*; do
					echo "$(basename "$t") $(cut -d' ' -f2,3,14,15 "$t/stat") $(cat "$t/wchan")"
				done
				echo "--- poll sets"; pollset "$q"
				echo "--- sockets (Recv-Q on QEMU's end: bytes QEMU has not read)"; ss -xp | grep "$d/vm/"
				cli=
				for run in "$work"/inflight/*; do
					[ "$(jq -r '.podDir' "$root/$(basename "$run")/state.json" 2>/dev/null)" = "$d" ] && cli=$(cat "$run")
				done
				echo "--- the run's CLI $cli: thread comm state utime stime wchan"
				for t in /proc/$cli/task/*; do
					echo "$(basename "$t") $(cut -d' ' -f2,3,14,15 "$t/stat") $(cat "$t/wchan")"
				done
				echo "--- all of QEMU's, the daemon's and the CLI's unix sockets"; ss -xp | grep -E "pid=($q|$dp|$cli),"
			} >"$f" 2>&1
			echo "stallhunt.sh: $(basename "$d") not ready after ${SLOW}s: $f" >&2
		done
		sleep 1
	done
}

worker() {
	local w=$1 i id t0 t1 rc pd bundle=$work/bundle
	if [ "$NETNS" = 1 ]; then
		bundle=$work/bundle-w$w
		mkdir -p "$bundle"
		jq --arg rootfs "$work/bundle/rootfs" --arg ns "/var/run/netns/$(nsname "$w")" \
			'.root.path = $rootfs | .linux.namespaces |= map(if .type == "network" then .path = $ns else . end)' \
			"$work/bundle/config.json" >"$bundle/config.json" || return
	fi
	for ((i = 0; i < R; i++)); do
		[ -e "$work/stop" ] && return
		id=w$w-$i
		if [ "$NETNS" = 1 ] && ! podnet "$w"; then
			echo "$id rc=netns: could not make the pod's network namespace" >>"$OUT/summary"
			return
		fi
		t0=$(date +%s%N)
		"$RUNV" --root "$root" --kernel "$KERNEL" --initrd "$INITRD" "${debug[@]}" run -d --bundle "$bundle" "$id" </dev/null >"$work/$id.out" 2>&1 &
		echo $! >"$work/inflight/$id" # the CLI's pid, for the catch
		wait $!
		rc=$?
		t1=$(date +%s%N)
		rm -f "$work/inflight/$id"
		pd=$(grep -o '"podDir": *"[^"]*"' "$root/$id/state.json" 2>/dev/null | cut -d'"' -f4)
		# A caught pod's log as it ended, beside what was caught while it waited.
		[ -n "$pd" ] && [ -e "$OUT/stall-$(basename "$pd").txt" ] && cp "$pd/daemon.log" "$OUT/stall-$(basename "$pd").daemon.log"
		echo "$id rc=$rc ms=$(((t1 - t0) / 1000000)) load=$(cut -d' ' -f1 /proc/loadavg) $(grep -o 'boot=[^ ]*' "$pd/daemon.log" 2>/dev/null) $(grep -v '^time=' "$work/$id.out" | head -c 300 | tr '\n' ' ')" >>"$OUT/summary"
		rv delete -f "$id" >/dev/null 2>&1
		[ "$NETNS" = 1 ] && podnetdel "$w"
	done
}

catch &
pids+=($!)
for ((w = 0; w < P; w++)); do
	worker "$w" &
	pids+=($!)
done
wait "${pids[@]:1}"
echo "stallhunt.sh: $(wc -l <"$OUT/summary") boots, $(grep -vc ' rc=0 ' "$OUT/summary") failed, $(ls "$OUT" | grep -c '^stall-') caught slow"
