package qemu

import (
	"fmt"

	"github.com/runv-project/runv/errdefs"
)

// classified gives an error extra classes for errors.Is without changing its message, so a
// launch error reads naturally and still answers to hypervisor.ErrVMExited and to the
// errdefs class the CLI maps to an exit status or gRPC code.
type classified struct {
	err     error
	classes []error
}

func (c *classified) Error() string   { return c.err.Error() }
func (c *classified) Unwrap() []error { return append([]error{c.err}, c.classes...) }

func classify(err error, classes ...error) error {
	return &classified{err: err, classes: classes}
}

// invalidf builds a configuration error: the caller must change something before retrying.
func invalidf(format string, args ...any) error {
	return classify(fmt.Errorf(format, args...), errdefs.ErrInvalidArgument)
}
