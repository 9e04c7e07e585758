// Package qemutest helps tests boot real VMs: it finds the guest kernel, builds a tiny
// busybox initrd that stands in for the agent, and makes directories short enough for
// unix sockets. Integration tests call RequireVM first, so `go test -short` skips them.
package qemutest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/runv-project/runv/internal/mounts"
)

// EnvKernel overrides the guest kernel used by tests.
const EnvKernel = "RUNV_TEST_KERNEL"

// RequireVM skips the test when real VMs should not or cannot be booted.
func RequireVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a real VM under TCG (about a second of CPU each): skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86")
	}
}

// Kernel returns the guest kernel: $RUNV_TEST_KERNEL, else the newest one built by
// kernel-config/build.sh into /var/cache/runv. It skips the test if there is none.
func Kernel(t testing.TB) string {
	t.Helper()
	if k := os.Getenv(EnvKernel); k != "" {
		return k
	}
	cands, _ := filepath.Glob("/var/cache/runv/kernel/*/vmlinux")
	if len(cands) == 0 {
		t.Skip("no guest kernel: run kernel-config/build.sh (or set " + EnvKernel + ")")
	}
	sort.Slice(cands, func(i, j int) bool { return mtime(cands[i]) > mtime(cands[j]) })
	return cands[0]
}

func mtime(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.ModTime().UnixNano()
}

// Dir returns a new directory under /tmp that is removed after the test. t.TempDir's paths
// embed the test name and can exceed the 107-byte limit of unix socket paths.
func Dir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "runv-t")
	if err != nil {
		t.Fatal(err)
	}
	// A launcher killed by its test (TestPdeathsig) leaves the share's bind on itself
	// (hypervisor/qemu's jail), as a killed pod daemon does for `runv delete` to detach.
	t.Cleanup(func() {
		mounts.UnmountUnder(d)
		os.RemoveAll(d)
	})
	return d
}

// QEMUsFor returns the pids of running QEMU processes whose command line mentions s
// (e.g. a VM directory): a test asserts it is empty after tearing a VM down.
func QEMUsFor(s string) []string {
	var pids []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "qemu-system") || !strings.Contains(string(b), s) {
			continue
		}
		pid := filepath.Base(filepath.Dir(p))
		if stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat")); err == nil && zombie(string(stat)) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// zombie reports whether a /proc/PID/stat line is that of a dead, unreaped process.
func zombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// EnvInitrd overrides the agent initrd used by tests.
const EnvInitrd = "RUNV_TEST_INITRD"

// AgentInitrd returns the real agent initrd: $RUNV_TEST_INITRD, else build/initrd.img of
// this repository ('make initrd'), else /var/lib/runv/initrd.img. It skips the test if
// there is none.
func AgentInitrd(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvInitrd); p != "" {
		return p
	}
	var cands []string
	if wd, err := os.Getwd(); err == nil {
		for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				cands = append(cands, filepath.Join(d, "build", "initrd.img"))
				break
			}
		}
	}
	cands = append(cands, "/var/lib/runv/initrd.img")
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	t.Skip("no agent initrd: run 'make initrd' (or set " + EnvInitrd + ")")
	return ""
}
