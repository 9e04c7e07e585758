//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad input must fail fast, say what is wrong and where, and leave nothing behind. Each case
// gets its own state root so "nothing behind" can be checked exactly.
func TestBadInputFailsFastAndLeavesNothing(t *testing.T) {
	t.Parallel()
	good := newBundle(t, "true")

	noRootfs := t.TempDir()
	copyFile(t, filepath.Join(good, "config.json"), filepath.Join(noRootfs, "config.json"))

	badJSON := t.TempDir()
	os.Symlink(filepath.Join(good, "rootfs"), filepath.Join(badJSON, "rootfs"))
	os.WriteFile(filepath.Join(badJSON, "config.json"), []byte(`{"ociVersion": "1.0.2", "process": {`), 0o644)

	noConfig := t.TempDir()

	tests := []struct {
		name    string
		args    []string
		wantErr []string // all must appear in stderr
	}{
		{"missing kernel", []string{"--kernel", "/nonexistent/vmlinux", "run", "--bundle", good, "k1"}, []string{"kernel", "/nonexistent/vmlinux", "not found"}},
		{"missing initrd", []string{"--initrd", "/nonexistent/initrd.img", "run", "--bundle", good, "i1"}, []string{"initrd", "/nonexistent/initrd.img"}},
		{"missing rootfs", []string{"run", "--bundle", noRootfs, "r1"}, []string{"rootfs", "does not exist"}},
		{"invalid config.json", []string{"run", "--bundle", badJSON, "j1"}, []string{"config.json", "not a valid OCI runtime config"}},
		{"no config.json", []string{"run", "--bundle", noConfig, "c1"}, []string{"config.json", "not found"}},
		{"id with a slash", []string{"run", "--bundle", good, "../x"}, []string{"invalid container id", "../x"}},
		{"empty id", []string{"run", "--bundle", good, ""}, []string{"container id is empty"}},
		{"no id", []string{"run", "--bundle", good}, []string{"exactly one container id"}},
		{"unknown container", []string{"state", "nosuch"}, []string{"nosuch", "does not exist"}},
		{"bad signal", []string{"kill", "nosuch", "SIGNOPE"}, []string{"unknown signal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot := shortRoot(t)
			// The global flags of the case come first; runvIn adds the suite's kernel/initrd,
			// which a later --kernel/--initrd in the case overrides.
			r := runvIn(t, stateRoot, nil, tt.args...)
			if r.code == 0 {
				t.Fatalf("succeeded: %s", r)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not mention %q: %s", w, r)
				}
			}
			if r.took > 5*time.Second {
				t.Errorf("took %s to fail; bad input must fail fast", r.took)
			}
			assertEmptyRoot(t, stateRoot)
		})
	}
}

func TestDuplicateIDRefused(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sleep", "30")
	id := newID(t)
	if r := runvIn(t, stateRoot, nil, "create", "--bundle", b, id); r.code != 0 {
		t.Fatalf("create: %s", r)
	}
	r := runvIn(t, stateRoot, nil, "create", "--bundle", b, id)
	if r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second create of %s: %s", id, r)
	}
	// The first container is untouched by the failed attempt.
	if st := stateOf(t, stateRoot, id); st.Status != "created" {
		t.Fatalf("first container is %q after a refused duplicate, want created", st.Status)
	}
	if r := runvIn(t, stateRoot, nil, "delete", id); r.code != 0 {
		t.Fatalf("delete: %s", r)
	}
	assertEmptyRoot(t, stateRoot)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertEmptyRoot checks that a state root holds no container or pod, and that nothing runs
// or is mounted for it.
func assertEmptyRoot(t *testing.T, stateRoot string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var left []string
		left = append(left, processesNaming(stateRoot)...)
		entries, _ := os.ReadDir(stateRoot)
		for _, e := range entries {
			if e.Name() == "@pods" || e.Name() == "@templates" {
				inner, _ := os.ReadDir(filepath.Join(stateRoot, e.Name()))
				for _, p := range inner {
					left = append(left, e.Name()+"/"+p.Name())
				}
				continue
			}
			left = append(left, "state "+e.Name())
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mounts), stateRoot) {
			left = append(left, "mounts under "+stateRoot)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind under %s: %v", stateRoot, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
