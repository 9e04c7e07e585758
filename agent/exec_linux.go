package agent

import (
	"bytes"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// initComm is the name libcontainer's nsexec gives the process that becomes the container's
// program (the init, and each exec'd process) until it execs that program.
const initComm = "runc:[2:INIT]"

// execWait bounds how long the agent waits for a process to exec its program.
const execWait = 10 * time.Second

// execed is called once libcontainer let the process go on to exec its program (Exec for
// the init, Run for an exec'd process). It waits until the program is exec'd — or the
// process is gone — and then sets the rlimits libcontainer was not given (lateRlimits).
//
// The wait also makes STARTCONTAINER answer once the container's program runs, not merely
// once the init was told to exec it (where libcontainer's Exec, and runc's `start`,
// return): on the host the program runs within a millisecond of that, in a VM under TCG
// exec'ing it (its binary comes over 9p) takes several. seen: the exec helper already saw
// the exec (its report pipe, close-on-exec, reached EOF), there is nothing to wait for.
func (p *process) execed(seen bool) {
	if p.pid <= 0 {
		return
	}
	if !seen && p.awaitProgram() {
		return
	}
	p.mu.Lock()
	p.execAt = time.Now()
	p.mu.Unlock()
	for _, rl := range p.lateRlimits {
		lim := unix.Rlimit{Cur: rl.Soft, Max: rl.Hard}
		if err := unix.Prlimit(p.pid, rl.Type, &lim, nil); err != nil {
			p.log.Errorf("set rlimit %d: %v", rl.Type, err)
		}
	}
}

// awaitProgram polls /proc/<pid>/stat until the process no longer runs libcontainer's init
// (it exec'd its program) or execWait passed; gone when it exited meanwhile.
func (p *process) awaitProgram() (gone bool) {
	stat := "/proc/" + strconv.Itoa(p.pid) + "/stat"
	deadline := time.Now().Add(execWait)
	for delay := 50 * time.Microsecond; ; delay = min(2*delay, 2*time.Millisecond) {
		if p.exited() {
			return true
		}
		b, err := os.ReadFile(stat)
		if err != nil {
			return true
		}
		if state, _, ok := parseStat(b); !ok || state == 'Z' || state == 'X' {
			return true // exited, not reaped yet
		}
		if statComm(b) != initComm {
			return false
		}
		if time.Now().After(deadline) {
			p.log.Errorf("not exec'd after %v", execWait)
			return false
		}
		time.Sleep(delay)
	}
}

// statComm is the command name in a /proc/<pid>/stat line, "pid (comm) S ...".
func statComm(b []byte) string {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return ""
	}
	return string(b[open+1 : end])
}

// startupGrace is how long after its exec a process may take to install its signal
// handlers before a signal sent to it is delivered regardless (awaitHandler).
const startupGrace = time.Second

// awaitHandler holds a catchable signal sent to a process that has just exec'd its
// program until the program has started: it ignores or blocks the signal, or handles it
// and waits (sleeps) for something — or it exits, or startupGrace has passed since the
// exec. A program installs its handlers and reaches its first wait as it starts; on the
// host that takes a millisecond after `start` returns, in a VM under TCG tens of them (its
// binary comes over 9p). A signal sent at once (`start; kill TERM` to `sh -c "trap ... TERM;
// sleep 10 & wait"`) would otherwise find the default disposition — death, or nothing at
// all for the init of a PID namespace, which the kernel does not signal without a handler —
// or a shell that runs its trap and only then starts to wait.
func (p *process) awaitHandler(sig unix.Signal) {
	if sig == unix.SIGKILL || sig == unix.SIGSTOP || sig <= 0 || sig > 64 {
		return
	}
	p.mu.Lock()
	execAt := p.execAt
	p.mu.Unlock()
	if execAt.IsZero() {
		return
	}
	deadline := execAt.Add(startupGrace)
	status := "/proc/" + strconv.Itoa(p.pid) + "/status"
	bit := uint64(1) << (sig - 1)
	for time.Now().Before(deadline) && !p.exited() {
		b, err := os.ReadFile(status)
		if err != nil {
			return
		}
		state, ok := statusState(b)
		if !ok || state == 'Z' || state == 'X' {
			return
		}
		if sigMask(b, "SigIgn:")&bit != 0 || sigMask(b, "SigBlk:")&bit != 0 {
			return // ignored, or held by the program itself
		}
		if sigMask(b, "SigCgt:")&bit != 0 && state == 'S' {
			return // handled, and the program is waiting for something
		}
		time.Sleep(time.Millisecond)
	}
}

// sigMask reads a hexadecimal signal mask line ("SigCgt:\t0000000000004000") of
// /proc/<pid>/status.
func sigMask(status []byte, key string) uint64 {
	i := bytes.Index(status, []byte("\n"+key))
	if i < 0 {
		return 0
	}
	line := status[i+1+len(key):]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	v, _ := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 64)
	return v
}

// statusState is the state letter of a /proc/<pid>/status ("State:\tS (sleeping)").
func statusState(status []byte) (byte, bool) {
	i := bytes.Index(status, []byte("\nState:"))
	if i < 0 {
		return 0, false
	}
	line := bytes.TrimSpace(status[i+len("\nState:"):])
	if len(line) == 0 {
		return 0, false
	}
	return line[0], true
}
