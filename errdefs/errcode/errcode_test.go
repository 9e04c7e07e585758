package errcode

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
)

// A class survives the trip through its code, and the message is kept.
func TestCodeRoundTrip(t *testing.T) {
	for _, c := range classes {
		err := fmt.Errorf("container %q: %w", "x", c.err)
		back := Err(Of(err), err.Error())
		if !errors.Is(back, c.err) {
			t.Errorf("%v: class lost after the round trip: %v", c.err, back)
		}
		if back.Error() != err.Error() {
			t.Errorf("message changed: %q → %q", err, back)
		}
	}
	plain := errors.New("plain")
	if Of(plain) != codes.Unknown {
		t.Errorf("code of an unclassified error: %v", Of(plain))
	}
	if err := Err(Of(plain), "plain"); err.Error() != "plain" {
		t.Errorf("unclassified error: %v", err)
	}
}
