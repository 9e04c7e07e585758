package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/convert"
)

func TestTakeNetSysctls(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{Sysctl: map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"net/ipv4/ping_group_range":           "0 2147483647",
		"kernel.msgmax":                       "8192",
	}}}
	got := convert.TakeNetSysctls(spec)
	if len(got) != 2 || got["net.ipv4.ip_unprivileged_port_start"] != "0" || got["net/ipv4/ping_group_range"] != "0 2147483647" {
		t.Errorf("taken: %v", got)
	}
	if len(spec.Linux.Sysctl) != 1 || spec.Linux.Sysctl["kernel.msgmax"] != "8192" {
		t.Errorf("left in the spec: %v", spec.Linux.Sysctl)
	}
	if convert.TakeNetSysctls(&specs.Spec{}) != nil || convert.TakeNetSysctls(nil) != nil {
		t.Error("a spec without sysctls gives none")
	}
}

func TestWriteSysctls(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"net/ipv4/ip_unprivileged_port_start", "net/ipv4/conf/eth0.100/forwarding"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte("1024"), 0o644)
	}
	err := writeSysctls(dir, map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"net/ipv4/conf/eth0.100/forwarding":   "1",
	})
	if err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"net/ipv4/ip_unprivileged_port_start": "0", "net/ipv4/conf/eth0.100/forwarding": "1"} {
		if b, _ := os.ReadFile(filepath.Join(dir, f)); string(b) != want {
			t.Errorf("%s = %q, want %q", f, b, want)
		}
	}
	// A sysctl the kernel does not have fails, naming it, as with runc.
	if err := writeSysctls(dir, map[string]string{"net.ipv4.nope": "1"}); err == nil || !strings.Contains(err.Error(), "net.ipv4.nope") {
		t.Errorf("unknown sysctl: %v", err)
	}
	for _, bad := range []string{"net/../../etc/passwd", "net..x", "net/ipv4/"} {
		if err := writeSysctls(dir, map[string]string{bad: "1"}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
