# Sourced by kernel-config/build.sh and qemu-build/build.sh: a built file cached outside the
# repository under a key, copied to where the Makefile wants it, built at most once at a time
# per key. Progress goes to stderr, the cached path to stdout.

cache_name='' cache_dir='' cache_file='' cache_out=''

log() { printf '[%s %s] %s\n' "$cache_name" "$(date +%T)" "$*" >&2; }

# deliver copies the cached file to OUT (if any) and prints its path.
deliver() {
  if [ -n "$cache_out" ]; then
    mkdir -p "$(dirname "$cache_out")"
    cp "$cache_dir/$cache_file" "$cache_out.tmp" && mv "$cache_out.tmp" "$cache_out"
  fi
  echo "$cache_dir/$cache_file"
}

# cache_open NAME DIR FILE OUT WHAT: delivers DIR/FILE and exits if it is built; else takes
# DIR's lock and returns, for the caller to build it (WHAT describes the key in the log).
cache_open() {
  cache_name=$1 cache_dir=$2 cache_file=$3 cache_out=$4
  if [ -f "$cache_dir/$cache_file" ]; then
    log "cached: $cache_dir/$cache_file ($5)"
    deliver; exit 0
  fi
  mkdir -p "$cache_dir"
  exec 9>"$cache_dir/.lock"
  flock 9   # two concurrent builds of the same key: the second waits and reuses the first
  if [ -f "$cache_dir/$cache_file" ]; then deliver; exit 0; fi
}
