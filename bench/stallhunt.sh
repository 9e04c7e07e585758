#!/bin/bash
# bench/stallhunt.sh — hunt the rare boot whose guest agent answers late (docs/reliability.md,
# "A boot whose agent answers late"): P workers each run R direct boots in a row, a
# `runv run -d` of a busybox `sleep` then `delete -f`, and every boot slower than SLOW
# seconds is caught while it waits: its daemon log, console, QEMU's threads (wchan, state,
# CPU time), the descriptors QEMU's main thread polls and the control socket's queues go to
# $OUT/stall-<pod>.txt. One line per boot in $OUT/summary.
#
#   P=5 R=100 SLOW=12 bench/stallhunt.sh            # ~500 boots; a stall was seen about once in 1000
#
# Environment: P (workers, 4), R (boots per worker, 50), SLOW (seconds, 12), OUT (results,
# a new /tmp/stallhunt.XXXX), RUNV (default build/runv), RUNV_KERNEL, RUNV_INITRD (build/).
# Everything it starts it deletes, also on ^C; the results stay in $OUT.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
P=${P:-4} R=${R:-50} SLOW=${SLOW:-12}
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
cleanup() {
	trap - EXIT INT TERM
	touch "$work/stop"
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	wait 2>/dev/null
	for id in $("$RUNV" --root "$root" list -q 2>/dev/null); do
		"$RUNV" --root "$root" delete -f "$id" >/dev/null 2>&1
	done
	rm -rf "$work"
	echo "stallhunt.sh: results in $OUT"
}
trap cleanup EXIT INT TERM
mkdir -p "$root" "$OUT"
(cd "$repo" && go run ./test/mkbundle "$work/bundle" sleep 100000 >/dev/null) || exit 1
rv() { "$RUNV" --root "$root" --kernel "$KERNEL" --initrd "$INITRD" "$@"; }

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

# catch dumps every pod that has not been ready for SLOW seconds, once.
catch() {
	while [ ! -e "$work/stop" ]; do
		for d in "$root"/@pods/p-*; do
			[ -f "$d/daemon.log" ] || continue
			grep -q "pod ready" "$d/daemon.log" 2>/dev/null && continue
			m=$(stat -c %Y "$d/daemon.log" 2>/dev/null) || continue
			[ $(($(date +%s) - m)) -ge "$SLOW" ] || continue
			f=$OUT/stall-$(basename "$d").txt
			[ -e "$f" ] && continue
			q=$(cat "$d/vm/qemu.pid" 2>/dev/null)
			{
				echo "at $(date -u +%T.%N), load $(cut -d' ' -f1-3 /proc/loadavg)"
				echo "--- daemon.log"; cat "$d/daemon.log"
				echo "--- console.log"; cat "$d/vm/console.log"
				echo "--- qemu $q: thread comm state utime stime wchan, then 2 s later"
				for pass in 1 2; do
					for t in /proc/$q/task/*; do
						echo "$(basename "$t") $(cut -d' ' -f2,3,14,15 "$t/stat") $(cat "$t/wchan")"
					done
					[ $pass = 1 ] && sleep 2
				done
				echo "--- poll sets"; pollset "$q"
				echo "--- sockets (Recv-Q on QEMU's end: bytes QEMU has not read)"; ss -xp | grep "$d/vm/"
			} >"$f" 2>&1
			echo "stallhunt.sh: $(basename "$d") not ready after ${SLOW}s: $f" >&2
		done
		sleep 1
	done
}

worker() {
	local w=$1 i id t0 t1 rc pd
	for ((i = 0; i < R; i++)); do
		[ -e "$work/stop" ] && return
		id=w$w-$i
		t0=$(date +%s%N)
		timeout 300 "$RUNV" --root "$root" --kernel "$KERNEL" --initrd "$INITRD" run -d --bundle "$work/bundle" "$id" </dev/null >"$work/$id.out" 2>&1
		rc=$?
		t1=$(date +%s%N)
		pd=$(grep -o '"podDir": "[^"]*"' "$root/$id/state.json" 2>/dev/null | cut -d'"' -f4)
		echo "$id rc=$rc ms=$(((t1 - t0) / 1000000)) load=$(cut -d' ' -f1 /proc/loadavg) $(grep -o 'boot=[^ ]*' "$pd/daemon.log" 2>/dev/null) $(head -c 300 "$work/$id.out")" >>"$OUT/summary"
		rv delete -f "$id" >/dev/null 2>&1
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
