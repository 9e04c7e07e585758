//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/internal/state"
)

// A foreground `run` that ended its pod returns before the pod daemon removed the pod's
// directory; a daemon killed in that window leaves the directory (the share's rootfs bind
// mount, sockets, the VM's directory) with no daemon and no container record. The next
// `runv list` or `runv delete`, or the end of the next pod daemon, removes it, mounts and
// all, and leaves a live pod's alone.
// The orphan is made the way a killed daemon leaves it: a detached container's daemon is
// killed (its QEMU follows), its stand-in too, and its record goes as the run's CLI
// removes it.
func TestOrphanedPodDirectorySwept(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	live := newID(t)
	if r := runvIn(t, stateRoot, nil, "run", "--detach", "--bundle", newBundle(t, "sleep", "1000"), live); r.code != 0 {
		t.Fatalf("run -d %s: %s", live, r)
	}
	t.Cleanup(func() { runvIn(t, stateRoot, nil, "delete", "--force", live) })
	waitStatus(t, stateRoot, live, "running")
	livePod := recordOf(t, stateRoot, live).PodDir

	// `list` and `delete` sweep before they return; a pod daemon sweeps as it ends, after
	// its foreground `run` returned.
	for _, tc := range []struct {
		name string
		args []string
		// again: the command may be repeated (it has no other effect) should the orphan
		// outlive its first sweep, which the test then reports with what held it.
		again bool
	}{
		{"list", []string{"list"}, true},
		{"delete", []string{"delete", "--force", "no-such-container"}, true},
		{"daemon's end", []string{"run", "--bundle", newBundle(t, "true"), newID(t)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			podDir := makeOrphanPod(t, stateRoot)
			if r := runvIn(t, stateRoot, nil, tc.args...); r.code != 0 || r.stderr != "" {
				t.Fatalf("%v: %s", tc.args, r)
			}
			start := time.Now()
			deadline, nextTry, tries := start.Add(30*time.Second), start.Add(5*time.Second), 1
			for {
				_, err := os.Stat(podDir)
				if os.IsNotExist(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("orphaned pod directory %s still there 30s after %v, run %d times (stat: %v); %s",
						podDir, tc.args, tries, err, orphanDiagnosis(podDir))
				}
				if tc.again && time.Now().After(nextTry) {
					t.Logf("orphaned pod directory still there %v after %v; %s; running it again",
						time.Since(start).Round(time.Millisecond), tc.args, orphanDiagnosis(podDir))
					if r := runvIn(t, stateRoot, nil, tc.args...); r.code != 0 || r.stderr != "" {
						t.Fatalf("%v: %s", tc.args, r)
					}
					tries++
					nextTry = time.Now().Add(2 * time.Second)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if m, err := mounts.Under(podDir); err != nil || len(m) > 0 {
				t.Errorf("mounts under the orphaned pod directory after %v: %v (%v)", tc.args, m, err)
			}
			if _, err := os.Stat(livePod); err != nil {
				t.Fatalf("the live pod's directory went with the orphan: %v", err)
			}
			if r := runvIn(t, stateRoot, nil, "exec", live, "true"); r.code != 0 {
				t.Fatalf("exec in the live pod after the sweep: %s", r)
			}
		})
	}
	if r := runvIn(t, stateRoot, nil, "delete", "--force", live); r.code != 0 {
		t.Fatalf("delete --force %s: %s", live, r)
	}
	assertEmptyRoot(t, stateRoot)
}

// makeOrphanPod leaves under stateRoot what a pod daemon killed after its last container's
// record went leaves: the pod's directory, its share's mounts and no process. It returns
// the directory.
func makeOrphanPod(t *testing.T, stateRoot string) string {
	t.Helper()
	id := newID(t)
	if r := runvIn(t, stateRoot, nil, "run", "--detach", "--bundle", newBundle(t, "sleep", "1000"), id); r.code != 0 {
		t.Fatalf("run -d %s: %s", id, r)
	}
	waitStatus(t, stateRoot, id, "running")
	rec := recordOf(t, stateRoot, id)
	syscall.Kill(rec.Daemon.Pid, syscall.SIGKILL)
	waitGone(t, rec.Daemon.Pid, 30*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for len(findPids(rec.PodDir, "qemu")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU of pod %s still alive 30s after its daemon was killed", rec.Pod)
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(rec.Shim.Pid, syscall.SIGKILL)
	waitGone(t, rec.Shim.Pid, 30*time.Second)
	if err := os.RemoveAll(filepath.Join(stateRoot, id)); err != nil {
		t.Fatal(err)
	}
	if m, err := mounts.Under(rec.PodDir); err != nil || len(m) == 0 {
		t.Fatalf("the orphan to sweep has no mounts under %s: %v %v", rec.PodDir, m, err)
	}
	return rec.PodDir
}

// orphanDiagnosis says what may keep a sweep off podDir: its entries, its lock file and who
// holds a lock on it (/proc/locks), and the processes that name the directory.
func orphanDiagnosis(podDir string) string {
	var b strings.Builder
	entries, _ := os.ReadDir(podDir)
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	fmt.Fprintf(&b, "entries %v", names)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(podDir, "daemon.lock"), &st); err != nil {
		fmt.Fprintf(&b, "; lock: %v", err)
	} else {
		locks, _ := os.ReadFile("/proc/locks")
		var held []string
		for _, l := range strings.Split(string(locks), "\n") {
			if f := strings.Fields(l); len(f) > 5 && strings.HasSuffix(f[5], ":"+strconv.FormatUint(st.Ino, 10)) {
				held = append(held, l)
			}
		}
		fmt.Fprintf(&b, "; lock inode %d held by %q", st.Ino, held)
	}
	fmt.Fprintf(&b, "; processes naming it %v", findPids(podDir, ""))
	return b.String()
}

// recordOf reads a container's record as runv keeps it.
func recordOf(t *testing.T, stateRoot, id string) state.Container {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateRoot, id, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec state.Container
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	return rec
}
