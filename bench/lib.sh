# bench/lib.sh — shell functions the bench scripts share (sourced, not run).

# factory_serving ROOT PID LOG [SECONDS]: waits until the factory daemon PID (its output in
# LOG) serves under the state root ROOT. Its socket is another process's file: polled, with a
# deadline (default 30 s). Fails, saying why on stdout, if the daemon exits first or the
# deadline passes.
factory_serving() {
	local root=$1 pid=$2 log=$3 seconds=${4:-30} i
	for ((i = 0; i < seconds * 10; i++)); do
		[ -S "$root/@factory/factory.sock" ] && return 0
		kill -0 "$pid" 2>/dev/null || { echo "factory daemon exited: $(tail -3 "$log")"; return 1; }
		sleep 0.1
	done
	echo "factory daemon not serving after $seconds s: $(tail -3 "$log")"
	return 1
}
