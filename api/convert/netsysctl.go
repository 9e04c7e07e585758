package convert

import (
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TakeNetSysctls removes the net.* sysctls from spec (the agent's own copy) and returns them.
//
// Every container of a pod runs in the VM's network namespace (AdjustSpec drops the network
// namespace: the VM is the pod's), so these sysctls are the pod's, as they are the sandbox
// network namespace's with runc. libcontainer refuses them for a container without a network
// namespace of its own ("sysctl ... not allowed in host network namespace"), and docker puts
// net.ipv4.ip_unprivileged_port_start=0 in every spec it writes: the agent sets them itself.
func TakeNetSysctls(spec *specs.Spec) map[string]string {
	if spec == nil || spec.Linux == nil {
		return nil
	}
	var out map[string]string
	for k, v := range spec.Linux.Sysctl {
		if !strings.HasPrefix(k, "net.") && !strings.HasPrefix(k, "net/") {
			continue
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[k] = v
		delete(spec.Linux.Sysctl, k)
	}
	return out
}
