// Package errgrpc carries errdefs classes across the pod daemon's gRPC API: the daemon
// converts with ToGRPC, the CLI back with FromGRPC, and errors.Is still matches the class.
// The classes' codes are errcode's.
package errgrpc

import (
	"google.golang.org/grpc/status"

	"github.com/runv-project/runv/errdefs/errcode"
)

// ToGRPC converts err into a gRPC status error carrying its class.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(errcode.Of(err), err.Error())
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
	return errcode.Err(st.Code(), st.Message())
}
