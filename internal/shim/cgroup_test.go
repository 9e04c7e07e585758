package shim

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCgroupLifecycle(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: makes host cgroups")
	}
	id := "runv-standin-test-" + filepath.Base(t.TempDir())
	limit, newLimit := int64(33), int64(44)
	spec := &specs.Spec{Linux: &specs.Linux{
		CgroupsPath: "/" + id,
		Resources:   &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}},
	}}
	p := exec.Command("sleep", "100")
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { p.Process.Kill(); p.Wait() }()

	cg, err := CreateCgroup(id, spec, false, p.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	dir, ok := cg.Paths["pids"]
	if !ok {
		t.Fatalf("no pids controller in %v", cg.Paths)
	}
	assertFile(t, filepath.Join(dir, "pids.max"), "33")
	assertFile(t, filepath.Join(dir, "cgroup.procs"), strconv.Itoa(p.Process.Pid))

	spec.Linux.Resources.Pids.Limit = &newLimit
	if err := cg.Update(id, spec); err != nil {
		t.Fatal(err)
	}
	assertFile(t, filepath.Join(dir, "pids.max"), "44")

	p.Process.Kill()
	p.Wait()
	if err := cg.Destroy(id, spec); err != nil {
		t.Fatal(err)
	}
	for ctrl, d := range cg.Paths {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s cgroup %s still there after Destroy (%v)", ctrl, d, err)
		}
	}
}

func TestCreateCgroupRefusesBadPath(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{CgroupsPath: "not:a:systemd:path"}}
	if _, err := CreateCgroup("x", spec, true, os.Getpid()); err == nil {
		t.Fatal("a malformed systemd cgroupsPath was accepted")
	}
}

func assertFile(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("%s = %q, want %q", path, got, want)
	}
}
