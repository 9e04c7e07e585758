//go:build integration

package cri

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRISystemdCgroupParent: a pod whose cgroup parent is a systemd slice, as the
// kubelet's systemd cgroup driver makes it. containerd's CRI then gives the sandbox the
// cgroupsPath slice:cri-containerd:<id>, and runv's shim puts the VM in the slice, at the
// path systemd gives it (each dash a level). runv only: this machine runs no systemd, which
// runc's systemd driver needs; the shim joins the directories itself.
func TestCRISystemdCgroupParent(t *testing.T) {
	top := strings.ReplaceAll(filepath.Base(work), "-", "")
	want := "/" + top + ".slice/" + top + "-pod.slice"
	t.Cleanup(func() {
		// Registered first, so run last: the pod's removal took the slices the shim made.
		left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", top+".slice"))
		if len(left) > 0 {
			t.Errorf("cgroups left after the pod was removed: %v", left)
			for _, d := range left {
				os.Remove(filepath.Join(d, top+"-pod.slice"))
				os.Remove(d)
			}
		}
	})
	p := runPod(t, "runv", func(c *rt.PodSandboxConfig) { c.Linux.CgroupParent = top + "-pod.slice" })
	p.container("main", nil, "sleep", "1000")
	vms := p.processes("qemu-system")
	if len(vms) != 1 {
		t.Fatalf("want one VM for the pod, have %v", vms)
	}
	pid := strings.Fields(vms[0])[0]
	cg, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && (f[1] == "memory" || f[1] == "") {
			found = true
			if f[2] != want {
				t.Errorf("QEMU (pid %s) is in cgroup %q (%s), want the pod's slice %s", pid, f[2], l, want)
			}
		}
	}
	if !found {
		t.Errorf("QEMU's /proc/%s/cgroup has no memory or unified line:\n%s", pid, cg)
	}
}
