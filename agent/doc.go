// Package agent is the runv guest agent: PID 1 of every pod VM (hyperstart re-created in
// Go). The same static binary is libcontainer's container init (`runv-agent init`).
//
// Boot (boot_linux.go): devtmpfs, then a zero-copy bind-mount switch root (so that
// containers can pivot_root; the bare initramfs cannot be pivoted away from), then proc,
// sysfs, cgroup2 (before any libcontainer call caches the cgroup mode), devpts, /run and
// /dev/shm. The kernel command line may carry runv.debug=1 (verbose console log),
// runv.probe=1 (print ProbeMarker and power off: the host's accelerator probe) and
// runv.trace=1 (one TRACE line per container operation with its steps' times, trace.go).
//
// Protocol (dispatch.go, vport_linux.go): the two virtio-serial ports are found by name.
// The control port carries commands; each runs in its own goroutine and is answered with
// one ACK or ERROR carrying its id. Unknown commands get an ERROR; a malformed frame ends
// the connection (the agent drains until the host disconnects and serves the next one).
// When the host disconnects (a VM template being snapshotted, a restarted daemon), the agent
// waits for it without losing state, and sends READY again once it sees the host back.
// The stream port runs agentproto.Mux for process stdio.
//
// Containers (container_linux.go, process_linux.go, stdio_linux.go; the conversion is api/convert's): the host's
// OCI spec is adjusted for the guest (rootfs and volumes on the 9p share, a tmpfs /dev, the
// guest's network namespace, the pod's namespaces as convert.AdjustSpec decides (podns_linux.go
// pins them), an agent-owned cgroup path, no hooks) and
// handed to libcontainer. A process's streams are registered before its command is
// acknowledged; its PROCESSEXIT is sent only after its output streams reached EOF.
//
// Two choices the protocol leaves open:
//   - A process whose executable is missing or cannot be executed never existed: its
//     NEWCONTAINER or EXECCMD fails with an ERROR of kind KindNotExecutable whose message
//     ends in "executable file not found" (shell exit code 127) or "permission denied"
//     (126), as `runc create`/`runc exec` fail (exitcode.go).
//   - PID 1 reaps orphans without stealing the statuses libcontainer waits for: a reaper
//     that pauses during container starts and skips the pids of tracked processes
//     (reaper.go explains why).
//
// A cold guest (a direct boot, a template clone) translates every block of code the first
// time it runs, so the container path uses one implementation of each helper: path/filepath
// (which specconv uses) rather than path, plain appends rather than a bytes.Buffer
// (docs/performance.md, "The agent's Go off the cold path, stop 16").
package agent
