//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/hypervisor"
)

// A pod's VM runs the QEMU that --qemu names, also when a pod daemon of its own launches it.
func TestQEMUFlagNamesTheBinary(t *testing.T) {
	t.Parallel()
	// The suite's QEMU (make integration-test sets RUNV_QEMU to runv's own build), copied to
	// a path of this test's own: only --qemu can lead runv there.
	src, err := exec.LookPath(hypervisor.DefaultQEMU())
	if err != nil {
		t.Fatalf("the suite's QEMU: %v", err)
	}
	dir, err := os.MkdirTemp("", "rvqemu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// QEMU is exec'd by its unprivileged user: the directory must be searchable.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	qemu := filepath.Join(dir, "qemu-system-x86_64")
	copyFile(t, src, qemu)
	if err := os.Chmod(qemu, 0o755); err != nil {
		t.Fatal(err)
	}

	stateRoot := newRoot(t)
	b := newBundleWith(t, func(*specs.Spec) {}, "sleep", "300")
	id := newID(t)
	mustRunv(t, stateRoot, "--qemu", qemu, "run", "-d", "--bundle", b, id)
	defer deleteAndCheck(t, stateRoot, id)
	waitStatus(t, stateRoot, id, "running")
	pid := qemuOf(t, stateRoot, id)
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	if exe != qemu {
		t.Errorf("the pod's QEMU (pid %d) runs %s, want %s (--qemu)", pid, exe, qemu)
	}
}
