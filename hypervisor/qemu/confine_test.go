package qemu

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// A QEMU cgroup whose launcher died (SIGKILL: it could not remove it) is removed by the
// next launch; one whose launcher lives is not.
func TestSweepCgroups(t *testing.T) {
	parent := t.TempDir()
	dead := "p-1-" + strconv.Itoa(1<<30) + "-1" // above any pid_max
	live := cgroupName("p-2")
	for _, d := range []string{dead, live, "not-ours"} {
		if err := os.Mkdir(filepath.Join(parent, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sweepCgroups(parent)
	for d, want := range map[string]bool{dead: false, live: true, "not-ours": true} {
		if _, err := os.Stat(filepath.Join(parent, d)); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", d, err == nil, want)
		}
	}
}
