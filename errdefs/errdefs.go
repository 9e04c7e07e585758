// Package errdefs defines the error classes of the host side (the CLI, the pod daemon and
// its gRPC API, the factory daemon), in the manner of containerd's errdefs: callers wrap a
// class with context using %w and test it with errors.Is. Package errgrpc maps them onto
// gRPC codes; the agent client maps the guest agent's error kinds (agentproto.Kind*) onto
// them, so the guest links neither.
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
