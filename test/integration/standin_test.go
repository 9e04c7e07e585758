//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// nsOf is the namespace a host process is in, as /proc shows it ("net:[4026531833]").
func nsOf(t *testing.T, pid int, kind string) string {
	t.Helper()
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// pidsCgroupDir is the directory of pid's cgroup that holds pids.max (cgroup v1 or v2).
func pidsCgroupDir(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unified := ""
	s := bufio.NewScanner(f)
	for s.Scan() {
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "pids" {
				return filepath.Join("/sys/fs/cgroup/pids", parts[2])
			}
		}
		if parts[0] == "0" {
			unified = filepath.Join("/sys/fs/cgroup", parts[2])
		}
	}
	if unified == "" {
		t.Fatalf("process %d is in no pids cgroup", pid)
	}
	return unified
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestShimHostNamespacesAndCgroup: what host tools see of a container, they see of its shim
// as they would of runc's container process. It is in namespaces of its own (not the
// host's), its exec'd processes' shims are in the same ones and in the same cgroup, which
// is the config's cgroupsPath with its limits, follows `update`, and goes with `delete`. A
// second container naming the first's /proc/<pid>/ns files is in them too.
func TestShimHostNamespacesAndCgroup(t *testing.T) {
	t.Parallel()
	stateRoot, id, cgPath := withHostCgroup(t)
	b := newBundleWith(t, func(s *specs.Spec) {
		s.Linux.CgroupsPath = cgPath
		limit := int64(77)
		s.Linux.Resources = &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}}
		if !hasNamespace(s, specs.CgroupNamespace) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
		}
	}, "sleep", "1000")
	mustRunv(t, stateRoot, "run", "-d", "--bundle", b, id)
	shim := stateOf(t, stateRoot, id).Pid

	for _, kind := range []string{"pid", "net", "ipc", "uts", "mnt", "cgroup"} {
		if nsOf(t, shim, kind) == nsOf(t, os.Getpid(), kind) {
			t.Errorf("the shim of %s is in the host's %s namespace %s; the config asks for a new one", id, kind, nsOf(t, shim, kind))
		}
	}
	dir := pidsCgroupDir(t, shim)
	if !strings.HasSuffix(dir, cgPath) {
		t.Errorf("the shim's pids cgroup is %s, want cgroupsPath %s", dir, cgPath)
	}
	if got := readTrimmed(t, filepath.Join(dir, "pids.max")); got != "77" {
		t.Errorf("pids.max of the container's host cgroup is %s, want 77 (linux.resources.pids.limit)", got)
	}

	execPidFile := filepath.Join(t.TempDir(), "exec.pid")
	mustRunv(t, stateRoot, "exec", "-d", "--pid-file", execPidFile, id, "sleep", "1000")
	execShim := readPid(t, execPidFile)
	for _, kind := range []string{"pid", "net", "ipc", "uts", "mnt", "cgroup"} {
		if a, b := nsOf(t, execShim, kind), nsOf(t, shim, kind); a != b {
			t.Errorf("exec'd process's shim is in %s, the container's in %s", a, b)
		}
	}
	if got := pidsCgroupDir(t, execShim); got != dir {
		t.Errorf("exec'd process's shim is in cgroup %s, the container's shim in %s", got, dir)
	}

	mustRunv(t, stateRoot, "update", "--pids-limit", "88", id)
	if got := readTrimmed(t, filepath.Join(dir, "pids.max")); got != "88" {
		t.Errorf("after update --pids-limit 88, pids.max is %s", got)
	}

	// A container joining the first's namespaces by path joins its pod and, on the host,
	// its shim's namespaces.
	id2 := newID(t)
	b2 := newBundleWith(t, func(s *specs.Spec) {
		for i, ns := range s.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace || ns.Type == specs.IPCNamespace || ns.Type == specs.UTSNamespace {
				s.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/%s", shim, map[specs.LinuxNamespaceType]string{
					specs.NetworkNamespace: "net", specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts"}[ns.Type])
			}
		}
	}, "sleep", "1000")
	mustRunv(t, stateRoot, "run", "-d", "--bundle", b2, id2)
	shim2 := stateOf(t, stateRoot, id2).Pid
	for _, kind := range []string{"net", "ipc", "uts"} {
		if a, b := nsOf(t, shim2, kind), nsOf(t, shim, kind); a != b {
			t.Errorf("%s joined %s's %s namespace by path; its shim is in %s, %s's in %s", id2, id, kind, a, id, b)
		}
	}
	if nsOf(t, shim2, "pid") == nsOf(t, shim, "pid") {
		t.Errorf("%s asked for a pid namespace of its own; its shim shares %s's", id2, id)
	}

	mustRunv(t, stateRoot, "delete", "--force", id2)
	deleteAndCheck(t, stateRoot, id)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the container's host cgroup %s is still there after delete (%v)", dir, err)
	}
}

func hasNamespace(s *specs.Spec, kind specs.LinuxNamespaceType) bool {
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == kind {
			return true
		}
	}
	return false
}

// A create that fails leaves no host cgroup and no shim: after the container exists (a
// prestart hook fails), and while the shim still waits for it (the guest cannot create it:
// the shim and its cgroup are made meanwhile).
func TestFailedCreateLeavesNoHostCgroup(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		hook []specs.Hook
		args []string
	}{
		{name: "prestart hook fails", hook: []specs.Hook{{Path: "/bin/false"}}, args: []string{"true"}},
		{name: "process not in the rootfs", args: []string{"/no/such/program"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateRoot, id, cgPath := withHostCgroup(t)
			b := newBundleWith(t, func(s *specs.Spec) {
				s.Linux.CgroupsPath = cgPath
				if tt.hook != nil {
					s.Hooks = &specs.Hooks{Prestart: tt.hook}
				}
			}, tt.args...)
			if r := runvIn(t, stateRoot, nil, "create", "--bundle", b, id); r.code == 0 {
				t.Fatalf("create succeeded: %s", r)
			}
			assertEmptyRoot(t, stateRoot)
			if dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + cgPath); len(dirs) > 0 {
				t.Errorf("host cgroup left after the failed create: %v", dirs)
			}
			if _, err := os.Stat("/sys/fs/cgroup" + cgPath); err == nil {
				t.Errorf("host cgroup /sys/fs/cgroup%s left after the failed create", cgPath)
			}
		})
	}
}

// withHostCgroup gives a test a state root, a container id and a cgroupsPath of the host's
// named after the id (one level, so that nothing of it remains after the container).
func withHostCgroup(t *testing.T) (stateRoot, id, cgPath string) {
	t.Helper()
	id = newID(t)
	return shortRoot(t), id, "/runv-test-" + id
}
