//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// standInDeathDeadline bounds how long the process of a dead stand-in may outlive it. The
// daemon reacts to the stand-in's pidfd at once; the margin is for a loaded machine.
const standInDeathDeadline = 10 * time.Second

// guestRuns reports whether `runv ps` lists a process in the container (in the VM) whose
// command line contains cmd.
func guestRuns(t *testing.T, stateRoot, id, cmd string) bool {
	t.Helper()
	r := runvIn(t, stateRoot, nil, "ps", id)
	return r.code == 0 && strings.Contains(r.stdout, cmd)
}

// waitGuest polls `runv ps` until the presence of cmd in the container is want, and returns
// how long that took.
func waitGuest(t *testing.T, stateRoot, id, cmd string, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for guestRuns(t, stateRoot, id, cmd) != want {
		if time.Since(start) > timeout {
			t.Fatalf("container %s: process %q in the VM: want running=%v, still not after %s; ps: %s", id, cmd, want, timeout, runvIn(t, stateRoot, nil, "ps", id))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// A client kills a container process by SIGKILLing the pid runv gave it: its stand-in on
// the host, which cannot forward a SIGKILL. The pod daemon watches every stand-in and kills
// the process in the VM when its stand-in dies, so `kill -9 <pid>`, a client's timeout and
// the host's OOM killer mean what they mean with runc. One pod serves the exec cases; its
// init's shim goes last.
func TestStandInDeathKillsItsProcess(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	dir := t.TempDir()
	initPidFile := filepath.Join(dir, "init.pid")
	id := newID(t)
	mustRunv(t, stateRoot, "run", "-d", "--pid-file", initPidFile, "--bundle", newBundle(t, "sleep", "1000"), id)
	waitStatus(t, stateRoot, id, "running")
	// Lifecycle events, from the container's creation on: exits carry their exit codes.
	events := startRunv(t, stateRoot, nil, "events", "--interval", "1h", id)

	t.Run("detached exec's shim", func(t *testing.T) {
		pidFile := filepath.Join(dir, "exec.pid")
		mustRunv(t, stateRoot, "exec", "-d", "--pid-file", pidFile, id, "sleep", "901")
		waitGuest(t, stateRoot, id, "sleep 901", true, 30*time.Second)
		shim := readPid(t, pidFile)
		syscall.Kill(shim, syscall.SIGKILL)
		took := waitGuest(t, stateRoot, id, "sleep 901", false, standInDeathDeadline)
		t.Logf("sleep 901 gone from the VM %s after its shim was SIGKILLed", took.Round(time.Millisecond))
		events.stdout.waitFor(t, regexp.MustCompile(`"type":"exit".*"exitCode":137`), 10*time.Second)
	})

	t.Run("foreground exec", func(t *testing.T) {
		pidFile := filepath.Join(dir, "fg.pid")
		fg := startRunv(t, stateRoot, nil, "exec", "--pid-file", pidFile, id, "sleep", "902")
		waitUntil(t, "--pid-file of the foreground exec written", 60*time.Second, func() bool { b, _ := os.ReadFile(pidFile); return len(b) > 0 })
		waitGuest(t, stateRoot, id, "sleep 902", true, 30*time.Second)
		if pid := readPid(t, pidFile); pid != fg.cmd.Process.Pid {
			t.Fatalf("--pid-file of a foreground exec says %d, runv exec is %d", pid, fg.cmd.Process.Pid)
		}
		fg.cmd.Process.Signal(syscall.SIGKILL)
		if r := fg.wait(t, 10*time.Second); r.code != 137 {
			t.Errorf("SIGKILLed runv exec: %s", r)
		}
		took := waitGuest(t, stateRoot, id, "sleep 902", false, standInDeathDeadline)
		t.Logf("sleep 902 gone from the VM %s after its foreground runv exec was SIGKILLed", took.Round(time.Millisecond))
	})

	t.Run("init's shim", func(t *testing.T) {
		start := time.Now()
		syscall.Kill(readPid(t, initPidFile), syscall.SIGKILL)
		waitStatus(t, stateRoot, id, "stopped")
		if took := time.Since(start); took > standInDeathDeadline {
			t.Errorf("container stopped %s after its init's shim was SIGKILLed, want < %s", took, standInDeathDeadline)
		} else {
			t.Logf("container stopped %s after its init's shim was SIGKILLed", took.Round(time.Millisecond))
		}
		mustRunv(t, stateRoot, "delete", id)
		assertEmptyRoot(t, stateRoot)
	})
}

// The stand-in of a container's init dies before the container ran (created), or the
// foreground `runv run` that stands in for it is SIGKILLed: the container stops, and delete
// cleans up.
func TestStandInDeathStopsTheContainer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// start starts the container and returns the pid of its init's stand-in.
		start func(t *testing.T, stateRoot, id, b string) int
	}{
		{"created container's shim", func(t *testing.T, stateRoot, id, b string) int {
			pidFile := filepath.Join(t.TempDir(), "pid")
			mustRunv(t, stateRoot, "create", "--pid-file", pidFile, "--bundle", b, id)
			waitStatus(t, stateRoot, id, "created")
			return readPid(t, pidFile)
		}},
		{"foreground runv run", func(t *testing.T, stateRoot, id, b string) int {
			fg := startRunv(t, stateRoot, nil, "run", "--bundle", b, id)
			waitStatusWhile(t, stateRoot, id, "running", fg)
			pid := fg.cmd.Process.Pid
			if st := stateOf(t, stateRoot, id); st.Pid != pid {
				t.Fatalf("state of a foreground run says pid %d, runv run is %d", st.Pid, pid)
			}
			t.Cleanup(func() { fg.wait(t, 10*time.Second) })
			return pid
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := newRoot(t)
			id := newID(t)
			pid := tc.start(t, stateRoot, id, newBundle(t, "sleep", "1000"))
			start := time.Now()
			syscall.Kill(pid, syscall.SIGKILL)
			waitStatus(t, stateRoot, id, "stopped")
			t.Logf("container stopped %s after the stand-in (pid %d) was SIGKILLed", time.Since(start).Round(time.Millisecond), pid)
			mustRunv(t, stateRoot, "delete", id)
			assertEmptyRoot(t, stateRoot)
		})
	}
}
