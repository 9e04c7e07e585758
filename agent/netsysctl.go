package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// takeNetSysctls removes the net.* sysctls from spec (the agent's own copy) and returns them.
//
// Every container of a pod runs in the VM's network namespace (adjustSpec drops the network
// namespace: the VM is the pod's), so these sysctls are the pod's, as they are the sandbox
// network namespace's with runc. libcontainer refuses them for a container without a network
// namespace of its own ("sysctl ... not allowed in host network namespace"), and docker puts
// net.ipv4.ip_unprivileged_port_start=0 in every spec it writes: the agent sets them itself.
func takeNetSysctls(spec *specs.Spec) map[string]string {
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

// writeSysctls writes sysctls below procSys (/proc/sys), in a stable order. A key is
// dot-separated (net.ipv4.ip_forward) or, as runc also accepts, slash-separated
// (net/ipv4/conf/eth0.100/forwarding, where dots are part of a name).
func writeSysctls(procSys string, sysctls map[string]string) error {
	keys := make([]string, 0, len(sysctls))
	for k := range sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		rel := k
		if !strings.Contains(k, "/") {
			rel = strings.ReplaceAll(k, ".", "/")
		}
		for _, part := range strings.Split(rel, "/") {
			if part == "" || part == "." || part == ".." {
				return fmt.Errorf("sysctl %q: invalid name", k)
			}
		}
		if err := writeExisting(filepath.Join(procSys, rel), sysctls[k]); err != nil {
			return fmt.Errorf("sysctl %q=%q in the pod's network namespace: %w", k, sysctls[k], err)
		}
	}
	return nil
}

// writeExisting writes a file that must exist: a sysctl the kernel lacks is an error.
func writeExisting(name, value string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
