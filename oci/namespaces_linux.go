package oci

import (
	"fmt"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// cloneFlags are the namespace types NS_GET_NSTYPE reports, by OCI name.
var cloneFlags = map[specs.LinuxNamespaceType]int{
	specs.PIDNamespace: unix.CLONE_NEWPID, specs.NetworkNamespace: unix.CLONE_NEWNET,
	specs.MountNamespace: unix.CLONE_NEWNS, specs.IPCNamespace: unix.CLONE_NEWIPC,
	specs.UTSNamespace: unix.CLONE_NEWUTS, specs.UserNamespace: unix.CLONE_NEWUSER,
	specs.CgroupNamespace: unix.CLONE_NEWCGROUP, specs.TimeNamespace: unix.CLONE_NEWTIME,
}

// checkNamespacePaths refuses a linux.namespaces[].path that is not a namespace of its
// entry's type, as runc does (its setns fails). The host namespace itself is not joined —
// the container runs in the VM — but a path is still checked where it names it: on the host.
func checkNamespacePaths(nss []specs.LinuxNamespace) error {
	for i, ns := range nss {
		if ns.Path == "" {
			continue
		}
		want, known := cloneFlags[ns.Type]
		if !known {
			continue
		}
		f, err := os.Open(ns.Path)
		if err != nil {
			return fmt.Errorf("linux.namespaces[%d] (%s): %w", i, ns.Type, err)
		}
		got, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
		f.Close()
		if err != nil {
			return fmt.Errorf("linux.namespaces[%d] (%s): %s is not a namespace file: %w", i, ns.Type, ns.Path, err)
		}
		if got != want {
			return fmt.Errorf("linux.namespaces[%d]: %s is a namespace of type %s, not %s", i, ns.Path, nsName(got), ns.Type)
		}
	}
	return nil
}

func nsName(flag int) string {
	for t, f := range cloneFlags {
		if f == flag {
			return string(t)
		}
	}
	return fmt.Sprintf("0x%x", flag)
}
