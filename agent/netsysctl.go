package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

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
