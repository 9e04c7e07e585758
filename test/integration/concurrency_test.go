//go:build integration

package integration

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

// Concurrent CLI calls on one container are serialised by its state lock: while a delete
// --force runs, every `state` sees either the whole container or none of it, and the
// delete leaves nothing behind.
func TestConcurrentCallsOnOneContainer(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sleep", "1000")
	id := newID(t)
	if r := runvIn(t, stateRoot, nil, "run", "-d", "--bundle", b, id); r.code != 0 {
		t.Fatalf("run -d: %s", r)
	}
	waitStatus(t, stateRoot, id, "running")

	var wg sync.WaitGroup
	results := make(chan result, 16)
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); results <- runvIn(t, stateRoot, nil, "state", id) }()
	}
	var del result
	wg.Add(1)
	go func() { defer wg.Done(); del = runvIn(t, stateRoot, nil, "delete", "--force", id) }()
	wg.Wait()
	close(results)

	if del.code != 0 {
		t.Fatalf("delete --force: %s", del)
	}
	for r := range results {
		if r.code != 0 {
			if !strings.Contains(r.stderr, "does not exist") {
				t.Errorf("state during delete failed oddly: %s", r)
			}
			continue
		}
		var st ociState
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.ID != id {
			t.Errorf("state during delete returned a torn record: %v: %s", err, r)
		}
	}
	assertEmptyRoot(t, stateRoot)
}

// Containers created at the same time in one root each get their own pod.
func TestConcurrentRunsInOneRoot(t *testing.T) {
	t.Parallel()
	stateRoot := shortRoot(t)
	b := newBundle(t, "sh", "-c", "echo $((6*7))")
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := runvIn(t, stateRoot, nil, "run", "--bundle", b, newID(t))
			if r.code != 0 || strings.TrimSpace(r.stdout) != "42" {
				t.Errorf("concurrent run: %s", r)
			}
		}()
	}
	wg.Wait()
	assertEmptyRoot(t, stateRoot)
}
