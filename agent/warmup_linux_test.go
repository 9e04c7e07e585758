package agent

import (
	"os"
	"reflect"
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
)

// The warm-up's spec goes through the NEWCONTAINER frame and back: what it runs is the
// spec it built, field for field.
func TestWarmupSpecAsReceived(t *testing.T) {
	spec := specconv.Example()
	spec.Process.Args = []string{"/init", WarmupArg}
	got, err := asReceived(spec)
	if err != nil {
		t.Fatal(err)
	}
	if got == spec {
		t.Fatal("asReceived returned the spec it was given, not a decoded one")
	}
	if !reflect.DeepEqual(got, spec) {
		t.Errorf("the decoded spec differs:\n got %+v\nwant %+v", got, spec)
	}
}

// warmShare only reads: the share is the host's.
func TestWarmShareWritesNothing(t *testing.T) {
	dir := t.TempDir()
	warmShare(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("warmShare left %d entries in the share, want none", len(entries))
	}
	warmShare(dir + "/missing") // a share that is not there: nothing to do, no panic
}
