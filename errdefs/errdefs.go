// Package errdefs defines the error classes shared by the CLI, the pod daemon, its gRPC API
// and the guest agent, in the manner of containerd's errdefs: callers wrap a class with
// context using %w and test it with errors.Is. Package errgrpc maps them onto gRPC codes;
// it is kept apart so that the guest agent, which uses the classes, links no gRPC.
package errdefs

import "errors"

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
