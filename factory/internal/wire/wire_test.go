package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/runv-project/runv/errdefs"
)

func TestErrorClassesSurviveTheWire(t *testing.T) {
	for _, class := range []error{errdefs.ErrUnavailable, errdefs.ErrInvalidArgument, errdefs.ErrNotImplemented} {
		r := ErrResponse(errors.Join(errors.New("context"), class))
		if err := r.Err(); !errors.Is(err, class) || !strings.Contains(err.Error(), "context") {
			t.Errorf("%v came back as %v", class, err)
		}
	}
	if err := (Response{}).Err(); err != nil {
		t.Errorf("no error came back as %v", err)
	}
}
