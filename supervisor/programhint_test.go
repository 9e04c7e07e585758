package supervisor

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// runcPath is runc's default PATH (`runc spec`).
const runcPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func TestProgramHint(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "usr/local/bin", "usr/local/sbin", "data", "usr/bin/true-dir"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, mode := range map[string]os.FileMode{"bin/busybox": 0o755, "usr/local/bin/plain": 0o644, "usr/bin/plain": 0o700, "bin/plain": 0o755} {
		if err := os.WriteFile(filepath.Join(root, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"bin/true":      "busybox",
		"sbin":          "usr/bin",      // merged /usr: /sbin is /usr/bin
		"usr/bin/abs":   "/bin/busybox", // absolute: resolved in the rootfs
		"usr/bin/host":  "/usr/lib/os-release-nowhere",
		"usr/bin/loose": "/etc/passwd", // exists on the host, not in the rootfs
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	proc := func(arg0 string, env ...string) *specs.Process { return &specs.Process{Args: []string{arg0}, Env: env} }
	for _, tc := range []struct {
		name   string
		p      *specs.Process
		mounts []string
		want   string
	}{
		{"runc's PATH: five misses, then /bin", proc("true", runcPath), []string{"/proc", "/dev/pts", "/etc/hosts"}, "/bin/true"},
		{"a path is not searched", proc("/bin/true", runcPath), nil, ""},
		{"no PATH", proc("true", "HOME=/"), nil, ""},
		{"the last PATH counts", proc("true", "PATH=/usr/bin", "PATH=/bin"), nil, "/bin/true"},
		{"a relative entry before it", proc("true", "PATH=/usr/bin:bin:/bin"), nil, ""},
		{"an empty entry before it", proc("true", "PATH=/usr/bin::/bin"), nil, ""},
		{"not found", proc("nothere", runcPath), nil, ""},
		{"a mount on a directory searched", proc("true", runcPath), []string{"/usr/local/bin"}, ""},
		{"a mount inside a directory searched", proc("true", runcPath), []string{"/usr/bin/tool"}, ""},
		{"a mount holding a directory searched", proc("true", runcPath), []string{"/usr"}, ""},
		{"a mount on the symlink's target of a directory searched", proc("true", "PATH=/sbin:/bin"), []string{"/usr/bin"}, ""},
		{"a mount through a symlink onto a directory searched", proc("true", "PATH=/usr/bin:/bin"), []string{"/sbin/x"}, ""},
		{"a mount elsewhere", proc("true", runcPath), []string{"/data", "/var/lib/x"}, "/bin/true"},
		{"a relative mount destination", proc("true", runcPath), []string{"data"}, ""},
		{"mounts after the program's directory do not matter", proc("true", "PATH=/bin:/usr/bin"), []string{"/usr/bin"}, "/bin/true"},
		{"no execute bit: skipped, as the guest skips it", proc("plain", "PATH=/usr/local/bin:/bin"), nil, "/bin/plain"},
		{"an execute bit for the owner only: hinted (the guest checks it as the user)", proc("plain", "PATH=/usr/bin:/bin"), nil, "/usr/bin/plain"},
		{"a directory: skipped", proc("true-dir", "PATH=/usr/bin"), nil, ""},
		{"an absolute symlink, resolved in the rootfs", proc("abs", "PATH=/usr/bin"), nil, "/usr/bin/abs"},
		{"a dangling symlink", proc("host", "PATH=/usr/bin"), nil, ""},
		{"a symlink to a host file outside the rootfs", proc("loose", "PATH=/usr/bin"), nil, ""},
		{"the entry as written, as the helper joins it", proc("true", "PATH=/bin/"), nil, "/bin//true"},
		{"the agent's own mounts count: /dev", proc("true", "PATH=/dev/bin:/bin"), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := programHint(root, tc.mounts, tc.p); got != tc.want {
				t.Errorf("programHint = %q, want %q", got, tc.want)
			}
		})
	}
	if got := programHint(filepath.Join(root, "missing"), nil, proc("true", runcPath)); got != "" {
		t.Errorf("a rootfs that is gone: %q, want no hint", got)
	}
}

func TestMayMount(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *specs.Process
		want bool
	}{
		{"capabilities left as they are", &specs.Process{}, true},
		{"CAP_SYS_ADMIN in the bounding set", &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_KILL", "CAP_SYS_ADMIN"}}}, true},
		{"runc's default", &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}}}, false},
		{"none", &specs.Process{Capabilities: &specs.LinuxCapabilities{}}, false},
	} {
		if got := mayMount(tc.p); got != tc.want {
			t.Errorf("%s: mayMount = %v, want %v", tc.name, got, tc.want)
		}
	}
}
