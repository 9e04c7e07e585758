package agent

import (
	"errors"

	"github.com/opencontainers/runc/libcontainer"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/convert"
)

// kindError is the classified error of the agent and of its conversion code.
type kindError = convert.KindError

// withKind classifies err (nil stays nil).
func withKind(kind string, err error) error { return convert.WithKind(kind, err) }

// errorf builds a classified error; %w works as in fmt.Errorf.
func errorf(kind, format string, args ...any) error { return convert.Errorf(kind, format, args...) }

// kindOf returns the protocol error kind of err: an explicit classification wins, then
// libcontainer's state errors (wrong state for the operation), else "" (unclassified).
func kindOf(err error) string {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.Kind
	}
	var re *agentproto.RemoteError
	if errors.As(err, &re) {
		return re.Kind
	}
	switch {
	case errors.Is(err, libcontainer.ErrNotRunning), errors.Is(err, libcontainer.ErrRunning),
		errors.Is(err, libcontainer.ErrPaused), errors.Is(err, libcontainer.ErrNotPaused):
		return agentproto.KindState
	case errors.Is(err, libcontainer.ErrExist):
		return agentproto.KindAlreadyExists
	case errors.Is(err, libcontainer.ErrNotExist):
		return agentproto.KindNotFound
	case errors.Is(err, libcontainer.ErrInvalidID):
		return agentproto.KindInvalid
	case errors.Is(err, agentproto.ErrProtocol):
		// A payload that does not decode: the frame was fine, its content was not.
		return agentproto.KindInvalid
	}
	return ""
}

// remoteError converts err into the wire form of an ERROR frame.
func remoteError(err error) *agentproto.RemoteError {
	return &agentproto.RemoteError{Kind: kindOf(err), Message: err.Error()}
}
