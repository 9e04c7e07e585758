// Package errdefs defines the error classes shared by the CLI, the pod daemon and its gRPC
// API, in the manner of containerd's errdefs: callers wrap a class with context using %w and
// test it with errors.Is; the classes map onto gRPC codes and back, so a class survives the
// trip from the daemon to the CLI.
package errdefs

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition") // wrong state for the operation
	ErrUnavailable        = errors.New("unavailable")         // pod daemon or VM gone
	ErrNotImplemented     = errors.New("not implemented")
	// ErrNotExecutable: the process's executable was missing or could not be run.
	ErrNotExecutable = errors.New("not executable")
)

var classes = []struct {
	err  error
	code codes.Code
}{
	{ErrNotFound, codes.NotFound},
	{ErrAlreadyExists, codes.AlreadyExists},
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrFailedPrecondition, codes.FailedPrecondition},
	{ErrUnavailable, codes.Unavailable},
	{ErrNotImplemented, codes.Unimplemented},
	// Carried as PermissionDenied: the closest gRPC class for "cannot execute".
	{ErrNotExecutable, codes.PermissionDenied},
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
		return fmt.Errorf("%s: %w", st.Message(), ErrUnavailable)
	}
	return errors.New(st.Message())
}

type classified struct {
	msg   string
	class error
}

func (e *classified) Error() string { return e.msg }
func (e *classified) Unwrap() error { return e.class }
