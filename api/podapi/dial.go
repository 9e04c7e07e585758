package podapi

import (
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/runv-project/runv/errdefs"
)

// Socket names inside a pod directory.
const (
	// APISocket serves the Pod service.
	APISocket = "namespaced.sock"
	// StdioSocket takes the descriptors a process's stdio is to be (internal/fdpass).
	StdioSocket = "stdio.sock"
)

// Dial connects to the pod daemon serving pod directory dir.
func Dial(dir string) (*grpc.ClientConn, error) {
	sock := filepath.Join(dir, APISocket)
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("pod daemon socket %s is gone: %w", sock, errdefs.ErrUnavailable)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to pod daemon at %s: %w", sock, err)
	}
	return conn, nil
}
