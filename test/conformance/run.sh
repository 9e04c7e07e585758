#!/usr/bin/env bash
# OCI runtime conformance: runs the validation programs of opencontainers/runtime-tools
# (validation/<name>/<name>.go, TAP output) against runc and against runv, one program at a
# time, and prints runc's and runv's pass/fail/skip counts side by side. See
# docs/oci-compliance.md ("Conformance suite") for the results and the differences that remain.
#
#   test/conformance/run.sh                 # build (once) and run everything against both
#   test/conformance/run.sh default hooks   # only these programs
#   RUNTIMES=runv test/conformance/run.sh   # only runv (runc's column stays empty)
#   test/conformance/run.sh --report DIR    # the table of a saved run (CACHE/results/<time>)
#
# Each run keeps its containers in state roots of its own (a temporary directory under /run,
# removed at the end): runs at the same time, and client tests beside one, do not see each
# other's containers.
#
# Environment: RUNC (default: runc on PATH), RUNV (default /usr/local/bin/runv), RUNTIMES
# ("runc runv"), TIMEOUT (seconds per program, default 120: a program still running then is
# killed and counted as failed), CACHE (default /var/cache/runv/runtime-tools: the sources,
# the built programs and the results; nothing is written in the repository).
#
# runtime-tools is fetched from the Go module proxy (its latest release, v0.9.0) and built in
# a scratch module under $CACHE/src: it has no go.mod, and the revisions its Godeps pin are not
# served by the proxy, so the scratch module requires the nearest tagged releases instead
# (runtime-spec v1.0.2, which it was written against, and the others as listed below).
# The programs run from $CACHE/work, which holds what they look for in their working
# directory: the `runtimetest` binary (copied into every bundle and run inside the container)
# and the module's rootfs-amd64.tar.gz (a busybox rootfs; every bundle is that rootfs with
# config.json beside it, root.path ".").
set -uo pipefail

RT_MODULE=github.com/opencontainers/runtime-tools
RT_VERSION=v0.9.0
# The dependencies of runtime-tools v0.9.0, at tagged releases the proxy serves (untagged
# modules: their latest pseudo-version).
RT_DEPS=(
	github.com/opencontainers/runtime-spec@v1.0.2
	github.com/opencontainers/selinux@v1.6.0
	github.com/sirupsen/logrus@v1.4.2
	github.com/urfave/cli@v1.22.1
	github.com/satori/go.uuid@v1.2.0
	github.com/blang/semver@v3.5.1+incompatible
	github.com/hashicorp/go-multierror@v1.0.0
	github.com/mrunalp/fileutils@v0.5.0
	github.com/xeipuuv/gojsonschema@v1.2.0
	github.com/stretchr/testify@v1.4.0
	github.com/mndrix/tap-go@v0.0.0-20171203230836-629fa407e90b
	github.com/syndtr/gocapability@v0.0.0-20200815063812-42c35b437635
)

CACHE=${CACHE:-/var/cache/runv/runtime-tools}
TIMEOUT=${TIMEOUT:-120}
RUNTIMES=${RUNTIMES:-runc runv}
RUNC=${RUNC:-$(command -v runc || echo /usr/sbin/runc)}
RUNV=${RUNV:-/usr/local/bin/runv}
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH

SRC=$CACHE/src
BIN=$CACHE/bin
WORK=$CACHE/work
RESULTS=$CACHE/results

die() { echo "conformance: $*" >&2; exit 1; }

# ---- build -----------------------------------------------------------------------------
build() {
	local stamp="$RT_VERSION ${RT_DEPS[*]} $(go env GOVERSION)"
	if [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$stamp" ]; then
		return 0
	fi
	echo "building runtime-tools $RT_VERSION in $SRC"
	rm -rf "$SRC" "$BIN" "$WORK"
	mkdir -p "$SRC" "$BIN" "$WORK" || die "cannot create $CACHE"
	cat >"$SRC/go.mod" <<-EOF
	module runv-conformance

	go 1.22
	EOF
	cat >"$SRC/tools.go" <<-EOF
	//go:build tools

	package tools

	import (
		_ "$RT_MODULE/cmd/runtimetest"
		_ "$RT_MODULE/validation/util"
	)
	EOF
	(
		cd "$SRC" && export GOWORK=off GOFLAGS=-mod=mod &&
			go get "$RT_MODULE@$RT_VERSION" "${RT_DEPS[@]}" &&
			go mod tidy
	) >"$CACHE/build.log" 2>&1 || { cat "$CACHE/build.log" >&2; die "fetching runtime-tools failed"; }

	local mod
	mod=$(cd "$SRC" && GOWORK=off go list -m -f '{{.Dir}}' "$RT_MODULE") || die "runtime-tools not in the module cache"
	(
		cd "$SRC" && export GOWORK=off GOFLAGS=-mod=mod &&
			CGO_ENABLED=0 go build -o "$BIN/runtimetest" "$RT_MODULE/cmd/runtimetest" &&
			for d in "$mod"/validation/*/; do
				n=$(basename "$d")
				[ "$n" = util ] && continue
				go build -o "$BIN/$n.t" "$RT_MODULE/validation/$n" || exit 1
			done
	) >>"$CACHE/build.log" 2>&1 || { cat "$CACHE/build.log" >&2; die "building runtime-tools failed"; }
	install -m 0755 "$BIN/runtimetest" "$WORK/runtimetest"
	install -m 0644 "$mod/rootfs-amd64.tar.gz" "$WORK/rootfs-amd64.tar.gz"
	echo "$stamp" >"$BIN/.stamp"
}

# ---- run -------------------------------------------------------------------------------
runtime_path() {
	case $1 in
	runc) echo "$RUNC" ;;
	runv) echo "$RUNV" ;;
	*) die "unknown runtime $1" ;;
	esac
}

# runtime_with_root RUNTIME: a wrapper that runs the runtime with this run's own state root
# (under STATE_ROOT), made once: two runs at the same time, or a client test beside one, must
# not list and delete each other's containers in the default /run/runc or /run/runv.
runtime_with_root() {
	local w=$STATE_ROOT/$1.sh
	if [ ! -x "$w" ]; then
		printf '#!/bin/sh\nexec %q --root %q "$@"\n' "$(runtime_path "$1")" "$STATE_ROOT/$1" >"$w"
		chmod +x "$w"
	fi
	echo "$w"
}

# Containers a program left behind (a killed program does not clean up): delete those that
# were not there before it ran.
cleanup_new() {
	local rt=$1 before=$2 id
	for id in $("$rt" list -q 2>/dev/null); do
		grep -qxF "$id" <<<"$before" && continue
		timeout 60 "$rt" delete --force "$id" >/dev/null 2>&1
	done
}

# unmount_under DIR LOG: mounts a program left under DIR (a bundle of a failed
# rootfsPropagation "shared" test keeps its proc, sys and dev mounts in the host's mount
# namespace with runc) are detached, and named in LOG: nothing is ever removed through them.
unmount_under() {
	local dir=$1 log=$2 m
	for m in $(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
		echo "left mounted on the host: $m (detached)" >>"$log"
		umount -l "$m" 2>/dev/null
	done
}

# tap_counts FILE RC -> "pass fail skip"
tap_counts() {
	awk -v rc="$2" '
		/^ok / { if (toupper($0) ~ /# SKIP/) skip++; else pass++; next }
		/^not ok / { if (toupper($0) ~ /# TODO/) pass++; else fail++; next }
		/^1\.\.[0-9]+/ { sub(/^1\.\./, ""); plan = $0 + 0 }
		/^ *"error":/ { errdiag = 1 }
		END {
			n = pass + fail + skip
			if (plan > n) fail += plan - n          # tests the program never reported
			# The hook programs report no test point: an "error" diagnostic is their failure,
			# its absence their one pass.
			if (n == 0 && plan == 0) { if (rc == 0 && !errdiag) pass = 1; else fail = 1 }
			if (rc != 0 && fail == 0) fail = 1      # died, timed out, or failed outside TAP
			printf "%d %d %d\n", pass, fail, skip
		}' "$1"
}

run_one() { # runtime program outdir
	local rt=$1 p=$2 out=$3 rtpath before rc
	rtpath=$(runtime_with_root "$rt")
	mkdir -p "$out/tmp"
	before=$("$rtpath" list -q 2>/dev/null)
	(cd "$WORK" && TMPDIR=$out/tmp RUNTIME=$rtpath timeout -k 10 "$TIMEOUT" "$BIN/$p.t") \
		>"$out/$p.tap" 2>"$out/$p.err" </dev/null
	rc=$?
	cleanup_new "$rtpath" "$before"
	unmount_under "$out/tmp" "$out/$p.err"
	rm -rf --one-file-system "$out/tmp"
	[ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "timeout after ${TIMEOUT}s" >>"$out/$p.err"
	echo "$(tap_counts "$out/$p.tap" $rc) $rc" >"$out/$p.count"
}

# rereport DIR: the table of a saved run (its .tap files counted again).
rereport() {
	local dir=$1 rt f p rc programs=()
	[ -d "$dir" ] || die "no results in $dir"
	for rt in runc runv; do
		for f in "$dir/$rt"/*.tap; do
			[ -f "$f" ] || continue
			p=$(basename "$f" .tap)
			rc=$(awk '{print $4}' "$dir/$rt/$p.count" 2>/dev/null)
			echo "$(tap_counts "$f" "${rc:-0}") ${rc:-0}" >"$dir/$rt/$p.count"
		done
	done
	mapfile -t programs < <(ls "$dir"/runc/*.tap "$dir"/runv/*.tap 2>/dev/null | xargs -n1 basename | sed 's/\.tap$//' | sort -u)
	report "$dir" "${programs[@]}"
}

# remove_state_root: what a killed program left in this run's roots goes, then the roots.
remove_state_root() {
	local rt
	for rt in $RUNTIMES; do
		[ -x "$STATE_ROOT/$rt.sh" ] && cleanup_new "$STATE_ROOT/$rt.sh" ""
	done
	rm -rf --one-file-system "$STATE_ROOT"
}

main() {
	if [ "${1:-}" = --report ]; then
		rereport "${2:?usage: run.sh --report RESULTS-DIR}"
		return
	fi
	command -v go >/dev/null || die "go is needed"
	[ "$(id -u)" = 0 ] || die "must run as root"
	build

	local programs=("$@")
	if [ ${#programs[@]} -eq 0 ]; then
		for f in "$BIN"/*.t; do programs+=("$(basename "$f" .t)"); done
	fi
	for p in "${programs[@]}"; do [ -x "$BIN/$p.t" ] || die "no validation program $p"; done
	for rt in $RUNTIMES; do [ -x "$(runtime_path "$rt")" ] || die "$rt not found at $(runtime_path "$rt")"; done

	# Short (pod sockets live under a runv root), and gone with the run.
	STATE_ROOT=$(mktemp -d /run/rvconf.XXXXXX) || die "cannot make a state root under /run"
	trap 'remove_state_root' EXIT

	local run_dir
	run_dir=$RESULTS/$(date +%Y%m%d-%H%M%S)
	mkdir -p "$run_dir"
	echo "runtime-tools $RT_VERSION; results in $run_dir; each program: cd $WORK && RUNTIME=<runtime> $BIN/<program>.t"
	echo "runc: $RUNC ($("$RUNC" --version 2>/dev/null | head -1))"
	echo "runv: $RUNV ($("$RUNV" --version 2>/dev/null | head -1))"

	local p rt line
	for p in "${programs[@]}"; do
		line=$p
		for rt in $RUNTIMES; do
			run_one "$rt" "$p" "$run_dir/$rt"
			read -r cp cf cs crc <<<"$(counts "$run_dir" "$rt" "$p")"
			line+="  $rt: $cp passed, $cf failed, $cs skipped (exit $crc)"
		done
		echo "$line"
	done
	echo
	report "$run_dir" "${programs[@]}" | tee "$run_dir/summary.txt"
}

# counts DIR RUNTIME PROGRAM -> "pass fail skip rc" or "- - - -"
counts() { if [ -f "$1/$2/$3.count" ]; then cat "$1/$2/$3.count"; else echo "- - - -"; fi; }

report() {
	local dir=$1; shift
	local p c v tc=(0 0 0) tv=(0 0 0) mark diffs=()
	printf '%-40s %17s   %17s\n' "" "runc" "runv"
	printf '%-40s %5s %5s %5s   %5s %5s %5s\n' program pass fail skip pass fail skip
	for p in "$@"; do
		read -r cp cf cs crc <<<"$(counts "$dir" runc "$p")"
		read -r vp vf vs vrc <<<"$(counts "$dir" runv "$p")"
		mark=""
		if [ "$cp" != - ] && [ "$vp" != - ] && { [ "$vp" -lt "$cp" ] || [ "$vf" -gt "$cf" ]; }; then
			mark="  <"
			diffs+=("$p")
		fi
		printf '%-40s %5s %5s %5s   %5s %5s %5s%s\n' "$p" "$cp" "$cf" "$cs" "$vp" "$vf" "$vs" "$mark"
		[ "$cp" != - ] && tc=($((tc[0] + cp)) $((tc[1] + cf)) $((tc[2] + cs)))
		[ "$vp" != - ] && tv=($((tv[0] + vp)) $((tv[1] + vf)) $((tv[2] + vs)))
	done
	printf '%-40s %5s %5s %5s   %5s %5s %5s\n' TOTAL "${tc[@]}" "${tv[@]}"
	echo
	echo "runc: ${tc[0]} passed, ${tc[1]} failed, ${tc[2]} skipped"
	echo "runv: ${tv[0]} passed, ${tv[1]} failed, ${tv[2]} skipped"
	if [ ${#diffs[@]} -gt 0 ]; then
		echo "programs where runv passes fewer tests (or fails more) than runc: ${diffs[*]}"
		echo "(TAP output and stderr: $dir/<runtime>/<program>.tap, .err)"
	fi
}

main "$@"
