//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hostMemoryCgroup is a memory cgroup of the host the test makes for a process.
type hostMemoryCgroup struct {
	dir              string
	limit, oomEvents string // file names: the limit, and where OOM kills are counted
}

// newHostMemoryCgroup makes a memory cgroup limited to limit bytes: cgroup v1's memory
// hierarchy on a hybrid host like this one, else cgroup v2's.
func newHostMemoryCgroup(t *testing.T, name string, limit int64) hostMemoryCgroup {
	t.Helper()
	cg := hostMemoryCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", name), limit: "memory.limit_in_bytes", oomEvents: "memory.oom_control"}
	if _, err := os.Stat(filepath.Dir(cg.dir)); err != nil {
		b, _ := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		if !strings.Contains(string(b), "memory") {
			t.Skip("no memory cgroup controller on this host (neither v1's nor v2's)")
		}
		cg = hostMemoryCgroup{dir: filepath.Join("/sys/fs/cgroup", name), limit: "memory.max", oomEvents: "memory.events"}
	}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Removed once empty: after the process in it died.
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for os.Remove(cg.dir) != nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(cg.dir, cg.limit), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return cg
}

// oomKills is how many processes the OOM killer killed in the cgroup ("oom_kill N").
func (cg hostMemoryCgroup) oomKills(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg.dir, cg.oomEvents))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// The host's OOM killer ending a pod's QEMU (the pod's host memory limit is below what its
// guest touches) is a pod whose VM died: the process waiting in the guest returns with an
// error or 137, `state` says stopped, `delete` cleans up, and nothing is left. QEMU is
// moved into a memory cgroup of the test's, limited to 64 MiB of new charges, and a process
// in the guest grows until the guest has touched more than that: the host kills QEMU long
// before the guest runs out of its 512 MiB.
func TestHostOOMKillsQEMU(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	id := newID(t)
	mustRunv(t, stateRoot, "--default_memory", "512", "run", "-d", "--bundle", newBundle(t, "sleep", "1000"), id)
	waitStatus(t, stateRoot, id, "running")
	pid := qemuOf(t, stateRoot, id)

	cg := newHostMemoryCgroup(t, "runv-oom-"+strconv.Itoa(os.Getpid())+"-"+strconv.Itoa(pid), 64<<20)
	if err := os.WriteFile(filepath.Join(cg.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The shell variable doubles until something kills it: here the host, killing QEMU.
	r := runvIn(t, stateRoot, nil, "exec", id, "sh", "-c", "a=0123456789abcdef; while true; do a=$a$a; done")
	if r.code == 0 || r.took > 2*time.Minute {
		t.Fatalf("exec of a memory hog in a VM over its host memory limit: %s, want a failure well within 2 minutes", r)
	}
	if alive(pid) {
		t.Fatalf("qemu (pid %d) still runs after the exec returned: %s", pid, r)
	}
	if n := cg.oomKills(t); n != 1 {
		t.Errorf("the host's OOM killer killed %d processes in QEMU's cgroup, want 1 (QEMU)", n)
	}
	st := stateOf(t, stateRoot, id)
	if st.Status != "stopped" {
		t.Errorf("state after the host OOM-killed QEMU: %q, want stopped", st.Status)
	}
	t.Logf("exec returned %d after %v: %s; state %s", r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr), st.Status)
	deleteAndCheck(t, stateRoot, id)
}
