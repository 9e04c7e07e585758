package supervisor

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// podShared are the namespaces every container of a pod shares with the pod's sandbox.
var podShared = []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.IPCNamespace, specs.UTSNamespace}

// nsFile names a namespace type under /proc/<pid>/ns.
var nsFile = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net", specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts",
	specs.PIDNamespace: "pid", specs.CgroupNamespace: "cgroup", specs.UserNamespace: "user",
	specs.MountNamespace: "mnt",
}

// guestNamespaces rewrites a spec's namespaces for the guest. Host namespace paths mean
// nothing inside the VM, so every path is dropped (the container gets a namespace of its
// own there) unless the container joins a pod: then network, IPC and UTS point at the
// sandbox's init in the guest (sandboxPid), and so does PID when the spec joins one.
// sandboxPid 0 means the container starts its own pod.
func guestNamespaces(s *specs.Spec, sandboxPid int) {
	if s.Linux == nil {
		if sandboxPid == 0 {
			return
		}
		s.Linux = &specs.Linux{}
	}
	nss := make([]specs.LinuxNamespace, 0, len(s.Linux.Namespaces)+len(podShared))
	have := map[specs.LinuxNamespaceType]bool{}
	for _, ns := range s.Linux.Namespaces {
		join := sandboxPid != 0 && (isPodShared(ns.Type) || (ns.Type == specs.PIDNamespace && ns.Path != ""))
		ns.Path = ""
		if join {
			ns.Path = fmt.Sprintf("/proc/%d/ns/%s", sandboxPid, nsFile[ns.Type])
		}
		have[ns.Type] = true
		nss = append(nss, ns)
	}
	// Not listing a namespace means "the runtime's own"; for a pod member that is the pod's.
	if sandboxPid != 0 {
		for _, t := range podShared {
			if !have[t] {
				nss = append(nss, specs.LinuxNamespace{Type: t, Path: fmt.Sprintf("/proc/%d/ns/%s", sandboxPid, nsFile[t])})
			}
		}
	}
	s.Linux.Namespaces = nss
}

func isPodShared(t specs.LinuxNamespaceType) bool {
	for _, p := range podShared {
		if p == t {
			return true
		}
	}
	return false
}
