package poddaemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A sweep removes exactly the pod directories whose daemon is gone and that no container
// record names: never one whose lock is held (a live daemon), one without a lock (a daemon
// starting, or of an older runv), or one a record still refers to (its delete cleans it).
func TestSweepOrphans(t *testing.T) {
	pods := t.TempDir()
	mkPod := func(name string) string {
		dir := filepath.Join(pods, name)
		if err := os.MkdirAll(filepath.Join(dir, "share", "c1"), 0o700); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	lockOf := func(dir string) {
		lock, err := holdLock(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lock.Close() })
	}
	deadLockOf := func(dir string) {
		lock, err := holdLock(dir)
		if err != nil {
			t.Fatal(err)
		}
		lock.Close() // its daemon is gone
	}
	live, starting, recorded, orphan := mkPod("live"), mkPod("starting"), mkPod("recorded"), mkPod("orphan")
	lockOf(live)
	deadLockOf(recorded)
	deadLockOf(orphan)
	inUseCalls := 0
	inUse := func() (map[string]bool, error) {
		inUseCalls++
		return map[string]bool{"recorded": true}, nil
	}
	if err := SweepOrphans(pods, inUse); err != nil {
		t.Fatalf("SweepOrphans: %v", err)
	}
	for dir, wantKept := range map[string]bool{live: true, starting: true, recorded: true, orphan: false} {
		_, err := os.Stat(dir)
		if kept := err == nil; kept != wantKept {
			t.Errorf("%s: kept = %v (stat: %v), want %v", filepath.Base(dir), kept, err, wantKept)
		}
	}

	// No candidate (the recorded pod deleted meanwhile): the records are not read.
	os.RemoveAll(recorded)
	inUseCalls = 0
	if err := SweepOrphans(pods, inUse); err != nil || inUseCalls != 0 {
		t.Errorf("second sweep: err %v, records read %d times, want nil and 0", err, inUseCalls)
	}
	// Records that cannot be read leave every candidate alone.
	deadLockOf(mkPod("another"))
	unreadable := errors.New("record unreadable")
	if err := SweepOrphans(pods, func() (map[string]bool, error) { return nil, unreadable }); !errors.Is(err, unreadable) {
		t.Errorf("sweep with unreadable records: err %v, want %v", err, unreadable)
	}
	if _, err := os.Stat(filepath.Join(pods, "another")); err != nil {
		t.Errorf("sweep with unreadable records removed a directory: %v", err)
	}
	// No pods directory yet: nothing to do.
	if err := SweepOrphans(filepath.Join(pods, "none"), inUse); err != nil {
		t.Errorf("sweep of a missing directory: %v", err)
	}
}
