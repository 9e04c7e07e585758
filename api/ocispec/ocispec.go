// Package ocispec holds the facts about OCI runtime-spec types that both sides of the VM
// boundary rely on: the host (bundle validation, the pod daemon, the shims) and the guest
// agent. It is a leaf: it imports nothing of runv, so the agent may link it.
package ocispec

import (
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// IsBindMount reports whether m is a bind mount: type "bind", or a "bind"/"rbind" option
// (runc accepts either).
func IsBindMount(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// Namespace describes one namespace type: its file under /proc/<pid>/ns and its clone flag.
type Namespace struct {
	ProcName  string
	CloneFlag int
}

// Namespaces is the one table of namespace types runv knows.
var Namespaces = map[specs.LinuxNamespaceType]Namespace{
	specs.PIDNamespace:     {"pid", unix.CLONE_NEWPID},
	specs.NetworkNamespace: {"net", unix.CLONE_NEWNET},
	specs.MountNamespace:   {"mnt", unix.CLONE_NEWNS},
	specs.IPCNamespace:     {"ipc", unix.CLONE_NEWIPC},
	specs.UTSNamespace:     {"uts", unix.CLONE_NEWUTS},
	specs.UserNamespace:    {"user", unix.CLONE_NEWUSER},
	specs.CgroupNamespace:  {"cgroup", unix.CLONE_NEWCGROUP},
	specs.TimeNamespace:    {"time", unix.CLONE_NEWTIME},
}

// ProcPath is /proc/<pid>/ns/<name> of namespace type t, or "" for a type runv does not know.
func ProcPath(pid int, t specs.LinuxNamespaceType) string {
	ns, ok := Namespaces[t]
	if !ok {
		return ""
	}
	return "/proc/" + strconv.Itoa(pid) + "/ns/" + ns.ProcName
}

// GuestNamespaces is what the host tells the guest of a spec's namespaces: the namespaces
// without their paths (a host namespace means nothing in the VM: the agent decides every
// namespace in the guest), and whether the spec named a PID namespace by path, which asks
// for the pod's PID namespace. The input is not modified.
func GuestNamespaces(in []specs.LinuxNamespace) (out []specs.LinuxNamespace, sharePID bool) {
	if in == nil {
		return nil, false
	}
	out = make([]specs.LinuxNamespace, len(in))
	for i, ns := range in {
		sharePID = sharePID || (ns.Type == specs.PIDNamespace && ns.Path != "")
		out[i] = specs.LinuxNamespace{Type: ns.Type}
	}
	return out, sharePID
}
