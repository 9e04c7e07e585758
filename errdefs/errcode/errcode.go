// Package errcode maps errdefs classes to gRPC codes and back, without gRPC's status type:
// the factory daemon's wire protocol carries a class as a code, and the holder of a pooled
// VM, a process of its own, should not load gRPC's status and protobuf packages to do it.
// errgrpc builds the gRPC status errors of the pod daemon's API on it.
package errcode

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"

	"github.com/runv-project/runv/errdefs"
)

var classes = []struct {
	err  error
	code codes.Code
}{
	{errdefs.ErrNotFound, codes.NotFound},
	{errdefs.ErrAlreadyExists, codes.AlreadyExists},
	{errdefs.ErrInvalidArgument, codes.InvalidArgument},
	{errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
	{errdefs.ErrUnavailable, codes.Unavailable},
	{errdefs.ErrNotImplemented, codes.Unimplemented},
	// Carried as PermissionDenied: the closest gRPC class for "cannot execute".
	{errdefs.ErrNotExecutable, codes.PermissionDenied},
}

// Of is the code of err's class; Unknown for an error of no class.
func Of(err error) codes.Code {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codes.Unknown
}

// Err is an error of code's class with message msg, as the other side wrote it (it already
// names the class's context). Canceled and DeadlineExceeded read as unavailable.
func Err(code codes.Code, msg string) error {
	for _, c := range classes {
		if code == c.code {
			return &classified{msg: msg, class: c.err}
		}
	}
	if code == codes.Canceled || code == codes.DeadlineExceeded {
		return fmt.Errorf("%s: %w", msg, errdefs.ErrUnavailable)
	}
	return errors.New(msg)
}

type classified struct {
	msg   string
	class error
}

func (e *classified) Error() string { return e.msg }
func (e *classified) Unwrap() error { return e.class }
