// Package errgrpc carries errdefs classes across the pod daemon's gRPC API: the daemon
// converts with ToGRPC, the CLI back with FromGRPC, and errors.Is still matches the class.
package errgrpc

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// ToGRPC converts err into a gRPC status error carrying its class.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// FromGRPC converts a gRPC status error back into an error of its class. The message is
// kept as the daemon wrote it (it already names the class's context).
func FromGRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, c := range classes {
		if st.Code() == c.code {
			return &classified{msg: st.Message(), class: c.err}
		}
	}
	if st.Code() == codes.Canceled || st.Code() == codes.DeadlineExceeded {
		return fmt.Errorf("%s: %w", st.Message(), errdefs.ErrUnavailable)
	}
	return errors.New(st.Message())
}

type classified struct {
	msg   string
	class error
}

func (e *classified) Error() string { return e.msg }
func (e *classified) Unwrap() error { return e.class }
