package agent

import (
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
