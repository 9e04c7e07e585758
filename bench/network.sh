#!/bin/bash
# bench/network.sh — a pod's network under runv beside runc (`make bench` runs it; it also
# runs alone). One server bundle (bench/nettool serve, static) runs under each runtime in a
# network namespace of the same kind: a veth whose peer is in the host's namespace, as a
# CNI bridge-less setup gives. From the host: TCP throughput host→pod and pod→host (one
# stream, NET_SECS seconds each), and connect+request+answer round trips (RR_N of them).
#
# Environment: RUNV, RUNV_KERNEL, RUNV_INITRD as bench/run.sh; NET_SECS (10), RR_N (200),
# NET_MTU (1500), NET_RUNV_FLAGS (extra global flags of runv, e.g. "--default_cpus 2").
# Everything it makes it removes, also on ^C. Traffic goes only to the
# addresses it assigns (10.234.x.0/24).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
export PATH=/usr/local/go/bin:$PATH
RUNV=${RUNV:-$(command -v runv || echo "$repo/build/runv")}
KERNEL=${RUNV_KERNEL:-/var/lib/runv/vmlinux}
INITRD=${RUNV_INITRD:-/var/lib/runv/initrd.img}
SECS=${NET_SECS:-10}
RR_N=${RR_N:-200}
MTU=${NET_MTU:-1500}
read -r -a runv_flags <<<"${NET_RUNV_FLAGS:-}"

work=$(mktemp -d /tmp/rvn.XXXX)
tag=$$
net_index=$((tag % 200 + 20))

cleanup() {
	trap - EXIT INT TERM
	"$RUNV" --root "$work/runv" delete -f net-runv >/dev/null 2>&1
	runc --root "$work/runc" delete -f net-runc >/dev/null 2>&1
	for p in $(grep -l -s -F "$work" /proc/[0-9]*/cmdline | cut -d/ -f3); do
		[ "$p" = $$ ] || kill -KILL "$p" 2>/dev/null
	done
	for rt in runv runc; do ip netns del "rvb-$rt-$tag" 2>/dev/null; done
	grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() { echo "bench/network: $*" >&2; exit 1; }

(cd "$repo" && CGO_ENABLED=0 go build -o "$work/nettool" ./bench/nettool) || die "cannot build bench/nettool"
nt=$work/nettool

# pod_ns RUNTIME N: a namespace with eth0 = 10.234.N.2/24 (MTU $MTU), its peer in the host's
# namespace with 10.234.N.1, a default route through it; prints the namespace's path.
pod_ns() {
	local ns=rvb-$1-$tag host=rvb$1$((tag % 1000)) n=$2
	ip netns add "$ns" &&
		ip link add "$host" mtu "$MTU" type veth peer name eth0 mtu "$MTU" netns "$ns" &&
		ip addr add "10.234.$n.1/24" dev "$host" && ip link set "$host" up &&
		ip -n "$ns" link set lo up &&
		ip -n "$ns" addr add "10.234.$n.2/24" dev eth0 && ip -n "$ns" link set eth0 up &&
		ip -n "$ns" route add default via "10.234.$n.1" || return 1
	echo "/run/netns/$ns"
}

# bundle RUNTIME NSPATH: the server bundle, in that namespace.
bundle() {
	local b=$work/srv-$1
	(cd "$repo" && go run ./test/mkbundle "$b" /nettool serve -listen :5001 >/dev/null) || return 1
	cp "$nt" "$b/rootfs/nettool"
	jq --arg p "$2" '.linux.namespaces |= map(if .type == "network" then .path = $p else . end)' "$b/config.json" >"$b/c" &&
		mv "$b/c" "$b/config.json" && echo "$b"
}

# wait_server ADDR: until the server answers (60 s).
wait_server() {
	local i
	for ((i = 0; i < 600; i++)); do
		"$nt" rr -addr "$1" -n 1 >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

declare -A res
measure() {
	local rt=$1 addr=$2 out
	out=$("$nt" send -addr "$addr" -secs "$SECS" -label "$rt host->pod") || return 1
	echo "$out"; res[$rt-in]=$(sed -n 's/.*mbit_s=\([0-9]*\).*/\1/p' <<<"$out")
	out=$("$nt" recv -addr "$addr" -secs "$SECS" -label "$rt pod->host") || return 1
	echo "$out"; res[$rt-out]=$(sed -n 's/.*mbit_s=\([0-9]*\).*/\1/p' <<<"$out")
	out=$("$nt" rr -addr "$addr" -n "$RR_N" -label "$rt connect+request") || return 1
	echo "$out"; res[$rt-rr]=$(sed -n 's/.* median=\([0-9.]*\) .*/\1/p' <<<"$out")
}

echo "== network: TCP from the host to a pod's server and back (one stream, ${SECS}s each; $RR_N connect+request round trips; MTU $MTU${NET_RUNV_FLAGS:+; runv $NET_RUNV_FLAGS})"
n=$net_index
for rt in runc runv; do
	ns=$(pod_ns "$rt" "$n") || die "cannot make the $rt namespace"
	b=$(bundle "$rt" "$ns") || die "cannot make the $rt bundle"
	case $rt in
	runc) runc --root "$work/runc" run -d --bundle "$b" net-runc </dev/null >/dev/null 2>"$work/err" || die "runc run: $(cat "$work/err")" ;;
	runv) "$RUNV" --root "$work/runv" --kernel "$KERNEL" --initrd "$INITRD" "${runv_flags[@]}" run -d --bundle "$b" net-runv </dev/null >/dev/null 2>"$work/err" ||
		die "runv run: $(cat "$work/err")" ;;
	esac
	wait_server "10.234.$n.2:5001" || die "the $rt server does not answer at 10.234.$n.2:5001"
	measure "$rt" "10.234.$n.2:5001" || die "$rt: measurement failed"
	n=$((n + 1))
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2fx", a/b; else print "n/a" }'; }
echo "  runv/runc: host->pod $(ratio "${res[runv-in]}" "${res[runc-in]}"), pod->host $(ratio "${res[runv-out]}" "${res[runc-out]}"), connect+request median $(ratio "${res[runv-rr]}" "${res[runc-rr]}") (time)"
