//go:build integration

package integration

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// smallDisk mounts a tmpfs of size bytes for the test's state root (pod directories
// included) and returns the state root.
func smallDisk(t *testing.T, size string) (stateRoot, mnt string) {
	t.Helper()
	mnt, err := os.MkdirTemp("", "runv-full-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		os.Remove(mnt)
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() {
		unix.Unmount(mnt, unix.MNT_DETACH)
		os.Remove(mnt)
	})
	return filepath.Join(mnt, "root"), mnt
}

// fillLeaving fills the filesystem at dir until at most leave bytes are free, and returns
// the file that holds the space.
func fillLeaving(t *testing.T, dir string, leave int64) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	f, err := os.CreateTemp(dir, "fill-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := free - leave; n > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
			t.Fatalf("fill %s with %d bytes: %v", dir, n, err)
		}
	}
	return f.Name()
}

// checkStateFiles checks that every state file under stateRoot is whole (atomic writes:
// a full disk leaves the old content or the new, never a torn one) and that no temporary
// file of an interrupted write is left.
func checkStateFiles(t *testing.T, stateRoot string) {
	t.Helper()
	filepath.WalkDir(stateRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && strings.Contains(p, "/share") {
			return fs.SkipDir // the containers' files, not ours
		}
		switch name := d.Name(); {
		case strings.HasPrefix(name, ".state.json.") || strings.HasPrefix(name, ".tmp"):
			t.Errorf("temporary file of an interrupted write left: %s", p)
		case strings.HasSuffix(name, ".json"):
			b, err := os.ReadFile(p)
			if err == nil && !json.Valid(b) {
				t.Errorf("torn state file %s: %q", p, b)
			}
		}
		return nil
	})
}

// A full disk under the state root: create fails with a clear error and leaves nothing;
// a running pod keeps answering state, list and delete, which cleans up; nothing is torn.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	stateRoot, mnt := smallDisk(t, "8m")
	b := newBundle(t, "sleep", "300")

	// Full before create, then with a little room (the state directory fits, the pod's
	// files do not, or only some of them).
	for _, leave := range []int64{0, 4 << 10, 32 << 10, 256 << 10} {
		fill := fillLeaving(t, mnt, leave)
		id := newID(t)
		r := runvIn(t, stateRoot, nil, "create", "--bundle", b, id)
		if r.code == 0 {
			// It fitted: the container works and goes away cleanly.
			t.Logf("create with %d KiB free succeeded", leave>>10)
			checkStateFiles(t, stateRoot)
			os.Remove(fill)
			mustRunv(t, stateRoot, "delete", "--force", id)
		} else {
			if !strings.Contains(r.stderr, "no space left on device") {
				t.Errorf("create with %d KiB free: the error does not say the disk is full: %s", leave>>10, r)
			}
			if !strings.Contains(r.stderr, id) && !strings.Contains(r.stderr, stateRoot) {
				t.Errorf("create with %d KiB free: the error names neither the container nor the root: %s", leave>>10, r)
			}
			checkStateFiles(t, stateRoot)
			os.Remove(fill)
			if r := runvIn(t, stateRoot, nil, "list"); r.code != 0 {
				t.Errorf("list after a failed create: %s", r)
			}
		}
		assertEmptyRoot(t, stateRoot)
	}

	// A running pod whose disk fills up: its events log and logs cannot grow.
	id := runDetached(t, stateRoot, b)
	fill := fillLeaving(t, mnt, 0)
	for i := 0; i < 5; i++ {
		// Each exec is an event (exec, exit) the daemon fails to append.
		runvIn(t, stateRoot, nil, "exec", id, "true")
	}
	if st := stateOf(t, stateRoot, id); st.Status != "running" {
		t.Errorf("state on a full disk: %q, want running", st.Status)
	}
	if r := runvIn(t, stateRoot, nil, "list"); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Errorf("list on a full disk: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "ps", id); r.code != 0 || !strings.Contains(r.stdout, "sleep") {
		t.Errorf("ps on a full disk: %s", r)
	}
	checkStateFiles(t, stateRoot)
	// Deleting needs no space: it works while the disk is still full.
	if r := runvIn(t, stateRoot, nil, "delete", "--force", id); r.code != 0 {
		t.Errorf("delete --force on a full disk: %s", r)
	}
	os.Remove(fill)
	assertEmptyRoot(t, stateRoot)
}
