package errgrpc

import (
	"errors"
	"fmt"
	"testing"

	"github.com/runv-project/runv/errdefs"
)

// A class survives the trip through gRPC, and the message is kept.
func TestGRPCRoundTrip(t *testing.T) {
	for _, class := range []error{errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrInvalidArgument,
		errdefs.ErrFailedPrecondition, errdefs.ErrUnavailable, errdefs.ErrNotImplemented, errdefs.ErrNotExecutable} {
		err := fmt.Errorf("container %q: %w", "x", class)
		back := FromGRPC(ToGRPC(err))
		if !errors.Is(back, class) {
			t.Errorf("%v: class lost after the round trip: %v", class, back)
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
