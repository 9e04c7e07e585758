package errgrpc

import (
	"errors"
	"fmt"
	"testing"
)

// A class survives the trip through gRPC, and the message is kept.
func TestGRPCRoundTrip(t *testing.T) {
	for _, c := range classes {
		err := fmt.Errorf("container %q: %w", "x", c.err)
		back := FromGRPC(ToGRPC(err))
		if !errors.Is(back, c.err) {
			t.Errorf("%v: class lost after the round trip: %v", c.err, back)
		}
		if back.Error() != err.Error() {
			t.Errorf("message changed: %q → %q", err, back)
		}
	}
	if err := FromGRPC(ToGRPC(errors.New("plain"))); err == nil || err.Error() != "plain" {
		t.Fatalf("unclassified error: %v", err)
	}
	if ToGRPC(nil) != nil || FromGRPC(nil) != nil {
		t.Fatal("nil not preserved")
	}
}
