package main

import (
	"fmt"

	"github.com/runv-project/runv/errdefs"
)

// stateError is runc's wording for an operation the container's state forbids. Clients
// match some of these texts (containerd's runc shim looks for "container not running", for
// instance), so they are kept verbatim; callers wrap them with the container's id. Their
// class is errdefs.ErrFailedPrecondition.
type stateError string

func (e stateError) Error() string { return string(e) }

// Is makes errors.Is(err, errdefs.ErrFailedPrecondition) hold for every stateError.
func (e stateError) Is(target error) bool { return target == errdefs.ErrFailedPrecondition }

// runc's texts (libcontainer/error.go and its commands).
const (
	errNotPaused        stateError = "container not paused"
	errStartStopped     stateError = "cannot start a container that has stopped"
	errStartRunning     stateError = "cannot start an already running container"
	errExecStopped      stateError = "cannot exec in a stopped container"
	errExecPaused       stateError = "cannot exec in a paused container (use --ignore-paused to override)"
	errEventsNotRunning stateError = "container is not running"
)

// errStartInState is runc's message for a start in any other state (paused, say).
func errStartInState(status string) error {
	return stateError(fmt.Sprintf("cannot start a container in the %s state", status))
}

// usageError reports a command line that does not make sense; it is of class
// errdefs.ErrInvalidArgument and names the command's usage.
func usageError(cmd, usage, format string, args ...any) error {
	return fmt.Errorf("%s; usage: runv %s %s: %w", fmt.Sprintf(format, args...), cmd, usage, errdefs.ErrInvalidArgument)
}

// unsupportedFlags refuses runc flags runv accepts by name but cannot honour.
func unsupportedFlags(c interface{ IsSet(string) bool }, names ...string) error {
	for _, n := range names {
		if c.IsSet(n) {
			return fmt.Errorf("--%s is not supported by runv: the container's processes run in a VM: %w", n, errdefs.ErrNotImplemented)
		}
	}
	return nil
}
