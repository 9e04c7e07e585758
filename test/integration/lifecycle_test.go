//go:build integration

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type ociState struct {
	OCIVersion string `json:"ociVersion"`
	ID         string `json:"id"`
	Pid        int    `json:"pid"`
	Status     string `json:"status"`
	Bundle     string `json:"bundle"`
}

func stateOf(t *testing.T, stateRoot, id string) ociState {
	t.Helper()
	r := runvIn(t, stateRoot, nil, "state", id)
	if r.code != 0 {
		t.Fatalf("state %s: %s", id, r)
	}
	var st ociState
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("state %s is not JSON: %v: %s", id, err, r)
	}
	return st
}

// waitStatus polls `runv state` until the container exists and reaches want, within a
// deadline.
func waitStatus(t *testing.T, stateRoot, id, want string) ociState {
	t.Helper()
	return waitStatusWhile(t, stateRoot, id, want, nil)
}

// waitStatusWhile is waitStatus while the runv invocation fg (nil: none) runs: its end
// fails the test at once with its own output, which says why the state never came.
func waitStatusWhile(t *testing.T, stateRoot, id, want string, fg *background) ociState {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if fg != nil {
			select {
			case r := <-fg.done:
				t.Fatalf("runv exited before container %s was %s: %s", id, want, r)
			default:
			}
		}
		r := runvIn(t, stateRoot, nil, "state", id)
		var st ociState
		if r.code == 0 {
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
				t.Fatalf("state %s is not JSON: %v: %s", id, err, r)
			}
			if st.Status == want {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s never reached %q; last state: %s", id, want, r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// The OCI lifecycle as a client drives it: create, state, start, kill, state, delete.
func TestLifecycleCreateStartKillDelete(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sleep", "1000")
	id := newID(t)
	pidFile := filepath.Join(t.TempDir(), "pid")

	if r := runvIn(t, stateRoot, nil, "create", "--bundle", b, "--pid-file", pidFile, id); r.code != 0 {
		t.Fatalf("create: %s", r)
	}
	st := stateOf(t, stateRoot, id)
	if st.Status != "created" || st.ID != id || st.Bundle != b {
		t.Fatalf("after create: %+v", st)
	}
	pidText, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(string(pidText))
	if pid != st.Pid || !alive(pid) {
		t.Fatalf("--pid-file says %q, state says pid %d (alive %v)", pidText, st.Pid, alive(st.Pid))
	}

	if r := runvIn(t, stateRoot, nil, "start", id); r.code != 0 {
		t.Fatalf("start: %s", r)
	}
	waitStatus(t, stateRoot, id, "running")
	if r := runvIn(t, stateRoot, nil, "start", id); r.code == 0 {
		t.Fatalf("second start of a running container succeeded: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "delete", id); r.code == 0 || !strings.Contains(r.stderr, "running") {
		t.Fatalf("delete of a running container: %s", r)
	}

	if r := runvIn(t, stateRoot, nil, "kill", id, "KILL"); r.code != 0 {
		t.Fatalf("kill: %s", r)
	}
	st = waitStatus(t, stateRoot, id, "stopped")
	// The shim exits like the process did (128+9).
	deadline := time.Now().Add(15 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		t.Fatalf("shim %d still alive after the container stopped", pid)
	}
	if r := runvIn(t, stateRoot, nil, "kill", id, "TERM"); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Fatalf("kill of a stopped container: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "delete", id); r.code != 0 {
		t.Fatalf("delete: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "state", id); r.code == 0 {
		t.Fatalf("state after delete: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}

// Killing qemu under a running container makes it stopped, and delete still cleans up.
func TestStateAfterQemuKilled(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sleep", "1000")
	id := newID(t)
	if r := runvIn(t, stateRoot, nil, "run", "--detach", "--bundle", b, id); r.code != 0 {
		t.Fatalf("run -d: %s", r)
	}
	waitStatus(t, stateRoot, id, "running")
	qemu := processesNaming(stateRoot)
	var killed bool
	for _, p := range findPids(stateRoot, "qemu-system") {
		syscall.Kill(p, syscall.SIGKILL)
		killed = true
	}
	if !killed {
		t.Fatalf("no qemu process found for %s among %v", stateRoot, qemu)
	}
	waitStatus(t, stateRoot, id, "stopped")
	if r := runvIn(t, stateRoot, nil, "delete", id); r.code != 0 {
		t.Fatalf("delete: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}

// findPids returns the pids whose command line names dir and contains word.
func findPids(dir, word string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), dir) && strings.Contains(string(b), word) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
	}
	return pids
}

// Killing the pod daemon takes its VM with it (Pdeathsig); the container is stopped, its
// shim exits like a killed process, and delete cleans up what the daemon left (mounts, the
// pod directory).
func TestStateAfterDaemonKilled(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sleep", "1000")
	id := newID(t)
	if r := runvIn(t, stateRoot, nil, "run", "--detach", "--bundle", b, id); r.code != 0 {
		t.Fatalf("run -d: %s", r)
	}
	st := waitStatus(t, stateRoot, id, "running")
	daemons := findPids(stateRoot, "containerd")
	if len(daemons) != 1 {
		t.Fatalf("want one pod daemon for %s, found %v", stateRoot, daemons)
	}
	syscall.Kill(daemons[0], syscall.SIGKILL)
	waitStatus(t, stateRoot, id, "stopped")
	deadline := time.Now().Add(30 * time.Second)
	for (alive(st.Pid) || len(findPids(stateRoot, "qemu-system")) > 0) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(st.Pid) {
		t.Errorf("shim %d outlived the pod daemon", st.Pid)
	}
	if q := findPids(stateRoot, "qemu-system"); len(q) > 0 {
		t.Errorf("qemu %v outlived the pod daemon", q)
	}
	if r := runvIn(t, stateRoot, nil, "delete", id); r.code != 0 {
		t.Fatalf("delete after the daemon died: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}
