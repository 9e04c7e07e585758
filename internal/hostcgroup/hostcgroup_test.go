package hostcgroup

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Every hierarchy Self names holds this process in the cgroup it names.
func TestSelfFindsThisProcess(t *testing.T) {
	hierarchies, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if len(hierarchies) == 0 {
		t.Fatal("no cgroup hierarchy found for this process")
	}
	pid := strconv.Itoa(os.Getpid())
	for _, h := range hierarchies {
		b, err := os.ReadFile(filepath.Join(h.Mount, h.Path, "cgroup.procs"))
		if err != nil {
			t.Errorf("%+v: %v", h, err)
			continue
		}
		if !slices.Contains(strings.Fields(string(b)), pid) {
			t.Errorf("%+v: pid %s not in its cgroup.procs", h, pid)
		}
	}
}

func TestMountOf(t *testing.T) {
	for _, tc := range []struct{ controllers, want string }{
		{"name=systemd", filepath.Join(Root, "systemd")},
		{"name=other", ""},
		{"no-such-controller", ""},
	} {
		if got := mountOf(tc.controllers); got != tc.want {
			t.Errorf("mountOf(%q) = %q, want %q", tc.controllers, got, tc.want)
		}
	}
}
