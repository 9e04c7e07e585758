package state

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		id   string
		want error
	}{
		{"abc", nil}, {"a-b_c.d+e", nil}, {strings.Repeat("x", MaxIDLength), nil},
		{"", errdefs.ErrInvalidArgument}, {"../x", errdefs.ErrInvalidArgument}, {"a/b", errdefs.ErrInvalidArgument},
		{".", errdefs.ErrInvalidArgument}, {"..", errdefs.ErrInvalidArgument}, {"@pods", errdefs.ErrInvalidArgument},
		{"a b", errdefs.ErrInvalidArgument}, {strings.Repeat("x", MaxIDLength+1), errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		if err := ValidateID(tt.id); !errors.Is(err, tt.want) && !(err == nil && tt.want == nil) {
			t.Errorf("ValidateID(%q) = %v, want %v", tt.id, err, tt.want)
		}
	}
}

func TestCreateSaveLoadRemove(t *testing.T) {
	s := &Store{Root: filepath.Join(t.TempDir(), "root")}
	h, err := s.Create("c1")
	if err != nil {
		t.Fatal(err)
	}
	want := &Container{ID: "c1", Bundle: "/b", Pod: "p-1", Created: time.Unix(10, 0).UTC(), Shim: Process{Pid: 5, StartTime: 7}}
	if err := h.Save(want); err != nil {
		t.Fatal(err)
	}
	h.Unlock()
	if _, err := s.Create("c1"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate create: %v, want ErrAlreadyExists", err)
	}
	h, err = s.Lock("c1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.Load()
	if err != nil || got.Pod != "p-1" || got.Shim != want.Shim || !got.Created.Equal(want.Created) {
		t.Fatalf("load: %+v, %v", got, err)
	}
	if ids, _ := s.List(); len(ids) != 1 || ids[0] != "c1" {
		t.Fatalf("list: %v", ids)
	}
	if err := h.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lock("c1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("lock after remove: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(s.Dir("c1")); !os.IsNotExist(err) {
		t.Fatalf("directory left after remove: %v", err)
	}
}

// A second locker waits for the first; if the first removes the container, the second is
// told it does not exist rather than reading a half-removed directory.
func TestLockSerialisesAndSeesRemoval(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	h, err := s.Create("c")
	if err != nil {
		t.Fatal(err)
	}
	h.Save(&Container{ID: "c"})
	var wg sync.WaitGroup
	var lockErr error
	locked := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		close(locked)
		h2, err := s.Lock("c")
		if err == nil {
			h2.Unlock()
		}
		lockErr = err
	}()
	<-locked
	h.Remove()
	wg.Wait()
	if lockErr != nil && !errors.Is(lockErr, errdefs.ErrNotFound) {
		t.Fatalf("second locker: %v", lockErr)
	}
}

func TestProcessAlive(t *testing.T) {
	self := Self()
	if !self.Alive() {
		t.Fatal("this process is not alive")
	}
	reused := self
	reused.StartTime++
	if reused.Alive() {
		t.Fatal("a pid with another start time counts as alive")
	}
	if (Process{}).Alive() {
		t.Fatal("pid 0 alive")
	}
}

// A directory a create left without a record (it died before saving) goes with
// RemoveOrphan; a recorded container's does not.
func TestRemoveOrphan(t *testing.T) {
	s := &Store{Root: filepath.Join(t.TempDir(), "root")}
	orphan, err := s.Create("orphan")
	if err != nil {
		t.Fatal(err)
	}
	orphan.Unlock() // as if its create had died
	kept, err := s.Create("kept")
	if err != nil {
		t.Fatal(err)
	}
	if err := kept.Save(&Container{ID: "kept"}); err != nil {
		t.Fatal(err)
	}
	kept.Unlock()

	for _, id := range []string{"orphan", "kept", "never-was"} {
		if err := s.RemoveOrphan(id); err != nil {
			t.Fatalf("RemoveOrphan(%s): %v", id, err)
		}
	}
	if _, err := os.Stat(s.Dir("orphan")); !os.IsNotExist(err) {
		t.Errorf("orphan directory still there (%v)", err)
	}
	if _, err := s.Lock("kept"); err != nil {
		t.Errorf("recorded container gone after RemoveOrphan: %v", err)
	}
}

// PodsInUse names the pod directories of every recorded container, also while a command
// holds a container's lock, and fails on a record it cannot read (it might name any pod).
func TestPodsInUse(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	for id, pod := range map[string]string{"a": "p-1", "b": "p-1", "c": "p-2"} {
		h, err := s.Create(id)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Save(&Container{ID: id, Pod: pod, PodDir: s.PodDir(pod)}); err != nil {
			t.Fatal(err)
		}
		if id != "c" {
			h.Unlock()
		} else {
			defer h.Unlock() // held while PodsInUse reads
		}
	}
	if _, err := s.Create("creating"); err != nil { // no record yet
		t.Fatal(err)
	}
	got, err := s.PodsInUse()
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"p-1": true, "p-2": true}; !maps.Equal(got, want) {
		t.Errorf("PodsInUse = %v, want %v", got, want)
	}
	if err := os.WriteFile(filepath.Join(s.Dir("b"), stateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PodsInUse(); err == nil {
		t.Errorf("PodsInUse with a corrupt record = %v, want an error", got)
	}
}
