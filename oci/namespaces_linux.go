package oci

import (
	"fmt"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/ocispec"
)

// checkNamespacePaths refuses a linux.namespaces[].path that is not a namespace of its
// entry's type, as runc does (its setns fails). The host namespace itself is not joined —
// the container runs in the VM — but a path is still checked where it names it: on the host.
func checkNamespacePaths(nss []specs.LinuxNamespace) error {
	for i, ns := range nss {
		if ns.Path == "" {
			continue
		}
		kind, known := ocispec.Namespaces[ns.Type]
		if !known {
			continue
		}
		want := kind.CloneFlag // what NS_GET_NSTYPE reports
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
	for t, ns := range ocispec.Namespaces {
		if ns.CloneFlag == flag {
			return string(t)
		}
	}
	return fmt.Sprintf("0x%x", flag)
}
