// Package sockets creates the host's unix sockets: owner-only (0600), in the 0700
// directories of the pod, the factory and the pooled VMs, so that only root reaches a pod
// daemon, a factory daemon, a holder or a QEMU.
package sockets

import (
	"fmt"
	"net"
	"os"
)

// Mode is the mode of every socket runv creates.
const Mode os.FileMode = 0o600

// Listen listens on a unix stream socket at path and makes it owner-only. The directory is
// 0700, so the moment between bind(2) and chmod(2) exposes nothing.
func Listen(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, Mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	return ln, nil
}
