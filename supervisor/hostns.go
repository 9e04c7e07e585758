package supervisor

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/network"
)

// CheckHostNamespaces refuses a container config that asks for the host's network or IPC
// namespace, which a VM cannot share. Callers that start a pod for the container check it
// first, so that a refused container boots no VM.
func CheckHostNamespaces(id string, s *specs.Spec) error {
	if _, err := network.NamespaceOf(s); err != nil {
		return fmt.Errorf("container %q: %w", id, err)
	}
	return refuseHostIPC(id, s)
}

// refuseHostIPC refuses a spec that asks for the host's IPC namespace (it lists none of its
// own): a VM cannot share it, and silently giving the VM's own instead would break what the
// pod expects (hostIPC in Kubernetes, docker --ipc host). The host's network is refused the
// same way by network.NamespaceOf.
func refuseHostIPC(id string, s *specs.Spec) error {
	if s.Linux != nil {
		for _, ns := range s.Linux.Namespaces {
			if ns.Type == specs.IPCNamespace {
				return nil
			}
		}
	}
	return fmt.Errorf("container %q asks for the host's IPC namespace (hostIPC, --ipc host): a runv pod runs in a VM, which cannot share it; give the pod its own IPC namespace, or run it with runc: %w", id, errdefs.ErrInvalidArgument)
}
