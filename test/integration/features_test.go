//go:build integration

package integration

import (
	"encoding/json"
	"regexp"
	"runtime"
	"slices"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// --version is runc's layout; features is the runtime-spec features document, and agrees
// with it on the spec version.
func TestVersionAndFeatures(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	v := mustRunv(t, stateRoot, "--version").stdout
	m := regexp.MustCompile(`^runv version \S+\nspec: (\d+\.\d+\.\d+)\ngo: (\S+)\n$`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("--version is not runc's layout (runv version X / spec: X / go: X):\n%s", v)
	}
	if m[2] != runtime.Version() {
		t.Errorf("--version says go %s, the suite is built with %s", m[2], runtime.Version())
	}

	r := mustRunv(t, stateRoot, "features")
	var f features.Features
	if err := json.Unmarshal([]byte(r.stdout), &f); err != nil {
		t.Fatalf("features is not the runtime-spec features JSON: %v\n%s", err, r.stdout)
	}
	if f.OCIVersionMin != "1.0.0" || f.OCIVersionMax != m[1] {
		t.Errorf("features ociVersion %s..%s, want 1.0.0..%s (the --version spec)", f.OCIVersionMin, f.OCIVersionMax, m[1])
	}
	if want := []string{"prestart", "createRuntime", "poststart", "poststop"}; !slices.Equal(f.Hooks, want) {
		t.Errorf("features hooks %v, want the host-run ones %v", f.Hooks, want)
	}
	l := f.Linux
	switch {
	case l == nil:
		t.Fatal("features has no linux section")
	case !slices.Contains(l.Namespaces, "pid") || !slices.Contains(l.Namespaces, "time") || !slices.Contains(l.Namespaces, "user"):
		t.Errorf("namespaces %v: want pid, time and user (see docs/oci-compliance.md)", l.Namespaces)
	case !slices.Contains(l.Capabilities, "CAP_SYS_ADMIN"):
		t.Errorf("capabilities %v lack CAP_SYS_ADMIN", l.Capabilities)
	case l.Cgroup == nil || l.Cgroup.V2 == nil || !*l.Cgroup.V2 || *l.Cgroup.V1 || *l.Cgroup.Systemd:
		t.Errorf("cgroup %+v: want v2 only", l.Cgroup)
	case l.Seccomp == nil || l.Seccomp.Enabled == nil || !*l.Seccomp.Enabled || !slices.Contains(l.Seccomp.Actions, "SCMP_ACT_ERRNO"):
		t.Errorf("seccomp %+v: want enabled with libseccomp's actions", l.Seccomp)
	case l.Apparmor == nil || *l.Apparmor.Enabled || l.Selinux == nil || *l.Selinux.Enabled:
		t.Errorf("apparmor/selinux reported enabled; the guest kernel has neither")
	case !slices.Contains(f.MountOptions, "rbind") || slices.Contains(f.MountOptions, "idmap"):
		t.Errorf("mount options %v: want rbind and no idmap (9p cannot be id-mapped)", f.MountOptions)
	}
	assertEmptyRoot(t, stateRoot)
}
