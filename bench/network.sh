#!/bin/bash
# bench/network.sh — a pod's network under runv beside runc (`make bench` runs it; it also
# runs alone). One server bundle (bench/nettool serve, static) runs under each runtime in a
# network namespace of the same kind: a veth whose peer is in the host's namespace, as a
# CNI bridge-less setup gives. From the host: TCP throughput host→pod and pod→host (one
# stream, NET_SECS seconds each), and connect+request+answer round trips (RR_N of them).
#
# Beside them, the bare floor: the same kernel booted by runv's own QEMU command line for a
# VM of that size (benchtool netfloor: machine type, vCPUs, memory, TCG), with the same
# nettool server as the initrd's init instead of the agent, its one NIC's tap given an
# address directly in the host's namespace (no pod namespace, no tc redirect, no runv).
# What runv cannot beat without changing the machine. And floor-tc: the same bare VM behind
# runv's host path (its tap in a pod-like namespace, redirected to and from the veth by tc),
# without runv: what the path costs, apart from runv's guest.
#
# NET_LEVERS=1 (or a list of their names) also measures, in the same run, what might move
# the floor and runv: 2 vCPUs with a multiqueue tap (and without: one queue pair),
# thread=multi/single and tb-size of
# TCG, 4 MiB socket buffers on both ends, the guest's receive offload (large frames from the
# host: virtio-net guest_tso4/6) or its TSO (host_tso4/6) off, the host's TCP autotuning
# limits (tcp_rmem/tcp_wmem) in the guest instead of its own (sized by its memory), the
# floor's server in a memory cgroup (with and without socket accounting). runc, runv, floor
# and floor-tc run together and each kind of figure is taken from all four in turn, seconds
# apart; each lever runs alone after them.
#
# Environment: RUNV, RUNV_KERNEL, RUNV_INITRD as bench/run.sh; NET_SECS (10), RR_N (200),
# NET_MTU (1500), NET_RUNV_FLAGS (extra global flags of runv, e.g. "--default_cpus 2"),
# NET_LEVERS.
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
	for id in $("$RUNV" --root "$work/runv" list -q 2>/dev/null); do "$RUNV" --root "$work/runv" delete -f "$id" >/dev/null 2>&1; done
	for id in $(runc --root "$work/runc" list -q 2>/dev/null); do runc --root "$work/runc" delete -f "$id" >/dev/null 2>&1; done
	for p in $(grep -l -s -F "$work" /proc/[0-9]*/cmdline | cut -d/ -f3); do
		[ "$p" = $$ ] || kill -KILL "$p" 2>/dev/null
	done
	for ns in $(ip netns list | grep -o "^rvb-[a-z0-9-]*-$tag\b"); do ip netns del "$ns"; done
	grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() { echo "bench/network: $*" >&2; exit 1; }

(cd "$repo" && CGO_ENABLED=0 go build -o "$work/nettool" ./bench/nettool) || die "cannot build bench/nettool"
nt=$work/nettool
(cd "$repo" && go build -o "$work/benchtool" ./bench/benchtool && go run ./initrd -agent "$nt" -o "$work/floor.img") ||
	die "cannot build benchtool or the floor's initrd"

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

# bundle NAME NSPATH [SERVE-ARG...]: the server bundle, in that namespace.
bundle() {
	local b=$work/srv-$1 ns=$2
	shift 2
	(cd "$repo" && go run ./test/mkbundle "$b" /nettool serve -listen :5001 "$@" >/dev/null) || return 1
	cp "$nt" "$b/rootfs/nettool"
	jq --arg p "$ns" --argjson sysctl "${bundle_sysctl:-null}" '.linux.namespaces |= map(if .type == "network" then .path = $p else . end) |
		if $sysctl then .linux.sysctl = $sysctl else . end' "$b/config.json" >"$b/c" &&
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

declare -A res addr client stop
names=()
# measure NAME...: each direction, then the round trips, of the started servers NAME...,
# one server after the other: the servers' figures of one kind are taken seconds apart,
# under the same load.
measure() {
	local name out
	names+=("$@")
	for name in "$@"; do
		out=$("$nt" send -addr "${addr[$name]}" -secs "$SECS" -label "$name host->pod" ${client[$name]}) || die "$name: measurement failed"
		echo "$out"; res[$name-in]=$(sed -n 's/.*mbit_s=\([0-9]*\).*/\1/p' <<<"$out")
	done
	for name in "$@"; do
		out=$("$nt" recv -addr "${addr[$name]}" -secs "$SECS" -label "$name pod->host" ${client[$name]}) || die "$name: measurement failed"
		echo "$out"; res[$name-out]=$(sed -n 's/.*mbit_s=\([0-9]*\).*/\1/p' <<<"$out")
	done
	for name in "$@"; do
		out=$("$nt" rr -addr "${addr[$name]}" -n "$RR_N" -label "$name connect+request") || die "$name: measurement failed"
		echo "$out"; res[$name-rr]=$(sed -n 's/.* median=\([0-9.]*\) .*/\1/p' <<<"$out")
	done
}

# container NAME RUNTIME N SOCKBUF [RUNV-FLAG...]: starts the server under runc or runv in a
# namespace of its own (10.234.N.2), as container net-NAME.
container() {
	local name=$1 rt=$2 n=$3 sockbuf=$4 ns b
	shift 4
	client[$name]=
	[ "$sockbuf" = 0 ] || client[$name]="-sockbuf $sockbuf"
	ns=$(pod_ns "$name" "$n") || die "cannot make the $name namespace"
	b=$(bundle "$name" "$ns" -sockbuf "$sockbuf") || die "cannot make the $name bundle"
	case $rt in
	runc) runc --root "$work/runc" run -d --bundle "$b" "net-$name" </dev/null >/dev/null 2>"$work/err" || die "runc run: $(cat "$work/err")"
		stop[$name]="runc --root $work/runc delete -f net-$name" ;;
	runv) "$RUNV" --root "$work/runv" --kernel "$KERNEL" --initrd "$INITRD" "${runv_flags[@]}" "$@" run -d --bundle "$b" "net-$name" </dev/null >/dev/null 2>"$work/err" ||
		die "runv run: $(cat "$work/err")"
		stop[$name]="$RUNV --root $work/runv delete -f net-$name" ;;
	esac
	addr[$name]=10.234.$n.2:5001
	wait_server "${addr[$name]}" || die "the $name server does not answer at ${addr[$name]}"
}

# floor NAME N SOCKBUF [NETFLOOR-ARG...]: starts the bare floor VM at 10.234.N.2 behind a tap
# (rvflN) in the host's namespace. With floor_ns set (a namespace of pod_ns), the tap is in
# that namespace instead, with eth0's MAC and no address, and redirected to and from eth0 by
# tc as runv does (runv's host path, without runv).
floor() {
	local name=$1 n=$2 sockbuf=$3 pid tap=rvfl$2
	shift 3
	local params=() in_ns=()
	client[$name]=
	[ "$sockbuf" = 0 ] || { client[$name]="-sockbuf $sockbuf"; params=(-guest-params "nettool.sockbuf=$sockbuf"); }
	if [ -n "${floor_ns:-}" ]; then
		in_ns=(ip netns exec "$floor_ns")
		params+=(-tap-addr=false -mac "$(ip -n "$floor_ns" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')")
	fi
	"${in_ns[@]}" "$work/benchtool" netfloor -kernel "$KERNEL" -initrd "$work/floor.img" -tap "$tap" \
		-addr "10.234.$n.2/24" "${params[@]}" "$@" >"$work/floor-$name.log" 2>&1 &
	pid=$!
	stop[$name]="kill $pid"
	# Until the floor's tap is there, 10.234.N.2 is routed to the host's default gateway: no
	# traffic before the guest said it serves.
	local i
	for ((i = 0; i < 600; i++)); do
		grep -q '^ready' "$work/floor-$name.log" 2>/dev/null && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -n "${floor_ns:-}" ] && grep -q '^ready' "$work/floor-$name.log"; then
		tc -n "$floor_ns" qdisc add dev eth0 ingress && tc -n "$floor_ns" qdisc add dev "$tap" ingress &&
			tc -n "$floor_ns" filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev "$tap" &&
			tc -n "$floor_ns" filter add dev "$tap" parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev eth0 ||
			die "$name: cannot redirect eth0 and $tap"
	fi
	addr[$name]=10.234.$n.2:5001
	grep -q '^ready' "$work/floor-$name.log" && wait_server "${addr[$name]}" || { cat "$work/floor-$name.log" >&2; die "the $name floor does not answer at ${addr[$name]}"; }
	grep '^guest: NETTOOL-SERVING' "$work/floor-$name.log" | sed "s/^guest: /  $name: /"
}

# stop NAME...: deletes the containers, stops the floor VMs.
stop() {
	local name
	for name in "$@"; do
		${stop[$name]} >/dev/null 2>&1
		ip netns del "rvb-$name-$tag" 2>/dev/null
	done
	wait
}

# one KIND NAME ARG...: starts one server (container or floor), measures it, stops it.
one() {
	local kind=$1 name=$2
	shift
	"$kind" "$@"
	measure "$name"
	stop "$name"
}

echo "== network: TCP from the host to a pod's server and back (one stream, ${SECS}s each; $RR_N connect+request round trips; MTU $MTU${NET_RUNV_FLAGS:+; runv $NET_RUNV_FLAGS}); load: $(cut -d' ' -f1-3 /proc/loadavg)"
n=$net_index
container runc runc "$n" 0
container runv runv $((n + 1)) 0
floor floor $((n + 2)) 0
floor_ns=$(basename "$(pod_ns floor-tc $((n + 5)))") || die "cannot make the floor-tc namespace"
floor floor-tc $((n + 5)) 0
floor_ns=
measure runc runv floor floor-tc
stop runc runv floor floor-tc
read -r _ _ tcp_rmax </proc/sys/net/ipv4/tcp_rmem
read -r _ _ tcp_wmax </proc/sys/net/ipv4/tcp_wmem
# lever NAME: whether NET_LEVERS asks for that lever ("1": all of them).
lever() { [ "${NET_LEVERS:-}" = 1 ] || [[ " ${NET_LEVERS:-} " == *" $1 "* ]]; }
if [ -n "${NET_LEVERS:-}" ]; then
	lever floor-2cpu-mq && one floor floor-2cpu-mq $((n + 2)) 0 -cpus 2
	lever floor-2cpu-1q && one floor floor-2cpu-1q $((n + 2)) 0 -cpus 2 -queues 1
	lever floor-2cpu-mq-single && one floor floor-2cpu-mq-single $((n + 2)) 0 -cpus 2 -tcg thread=single
	lever floor-tb64 && one floor floor-tb64 $((n + 2)) 0 -tcg tb-size=64
	lever floor-sockbuf4m && one floor floor-sockbuf4m $((n + 2)) $((4 << 20))
	lever floor-rxoffload-off && one floor floor-rxoffload-off $((n + 2)) 0 -nic-props guest_tso4=off,guest_tso6=off,guest_ecn=off
	lever floor-tso-off && one floor floor-tso-off $((n + 2)) 0 -nic-props host_tso4=off,host_tso6=off
	lever runv2 && one container runv2 runv $((n + 3)) 0 --default_cpus 2
	lever runvbuf && one container runvbuf runv $((n + 4)) $((4 << 20))
	# The host's TCP autotuning limits (what a runc container's namespace has) in the guest:
	# the bundle's net.* sysctls apply to the pod's VM.
	lever floor-tcpbuf && one floor floor-tcpbuf $((n + 2)) 0 -guest-params "nettool.tcpbuf=$tcp_rmax,$tcp_wmax"
	bundle_sysctl=$(jq -n --arg r "4096 131072 $tcp_rmax" --arg w "4096 16384 $tcp_wmax" '{"net.ipv4.tcp_rmem": $r, "net.ipv4.tcp_wmem": $w}')
	lever runvtcp && one container runvtcp runv $((n + 6)) 0
	bundle_sysctl=
	# The floor serving from a memory cgroup, as a container's process does, and the same
	# with socket memory left out of cgroups' accounting.
	lever floor-cgroup && one floor floor-cgroup $((n + 2)) 0 -guest-params nettool.cgroup=1
	lever floor-cgroup-nosocket && one floor floor-cgroup-nosocket $((n + 2)) 0 -guest-params "nettool.cgroup=1 cgroup.memory=nosocket"
fi
echo "  load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2fx", a/b; else print "n/a" }'; }
printf '  %-22s %14s %14s %20s\n' "" "host->pod" "pod->host" "connect+request"
for name in "${names[@]}"; do
	printf '  %-22s %8s Mbit/s %8s Mbit/s %10s ms (median)   /runc: %s %s %s\n' "$name" "${res[$name-in]}" "${res[$name-out]}" "${res[$name-rr]}" \
		"$(ratio "${res[$name-in]}" "${res[runc-in]}")" "$(ratio "${res[$name-out]}" "${res[runc-out]}")" "$(ratio "${res[$name-rr]}" "${res[runc-rr]}")"
done
echo "  runv/runc: host->pod $(ratio "${res[runv-in]}" "${res[runc-in]}"), pod->host $(ratio "${res[runv-out]}" "${res[runc-out]}"), connect+request median $(ratio "${res[runv-rr]}" "${res[runc-rr]}") (time)"
echo "  runv/floor: host->pod $(ratio "${res[runv-in]}" "${res[floor-in]}"), pod->host $(ratio "${res[runv-out]}" "${res[floor-out]}"); floor/runc: host->pod $(ratio "${res[floor-in]}" "${res[runc-in]}"), pod->host $(ratio "${res[floor-out]}" "${res[runc-out]}")"
