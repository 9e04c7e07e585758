//go:build integration

package cri

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIUnresponsiveGuest: the pid the CRI reports for a runv container and its sandbox is
// their VM's. A pod whose guest stops answering (its QEMU stopped with
// SIGSTOP, as a hung or hostile guest looks from the host) is still stopped by
// StopPodSandbox within a bound: the shim waits for the guest to carry out the CRI's
// SIGKILL for a while (supervisor.GuestKillTimeout, 20 s), then ends the VM; the container
// is reported exited with 137, and the shim and the VM are gone. Before, the call waited
// on the guest until its deadline (the kubelet's is 2 minutes) and left the pod running.
func TestCRIUnresponsiveGuest(t *testing.T) {
	p := runPod(t, "runv", nil)
	c := p.container("main", nil, "sleep", "1000")
	vms := p.processes("qemu-system")
	if len(vms) != 1 {
		t.Fatalf("want the pod's VM among its processes, have %v", vms)
	}
	qemu, err := strconv.Atoi(strings.Fields(vms[0])[0])
	if err != nil {
		t.Fatalf("pid of %q: %v", vms[0], err)
	}
	// The pid the CRI gives for the container and the sandbox (crictl inspect's
	// info.pid) is the VM's, the host process that runs them.
	cs, err := runtimeSvc.ContainerStatus(ctx(t), &rt.ContainerStatusRequest{ContainerId: c, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := runtimeSvc.PodSandboxStatus(ctx(t), &rt.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	for what, info := range map[string]string{"ContainerStatus": cs.Info["info"], "PodSandboxStatus": ps.Info["info"]} {
		var v struct {
			Pid int `json:"pid"`
		}
		if err := json.Unmarshal([]byte(info), &v); err != nil || v.Pid != qemu {
			t.Errorf("%s's verbose info gives pid %d (%v), want the VM's %d", what, v.Pid, err, qemu)
		}
	}
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(qemu, syscall.SIGKILL) })

	cctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := runtimeSvc.StopPodSandbox(cctx, &rt.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("StopPodSandbox of a pod whose guest stopped answering, after %s: %v%s", time.Since(start).Round(time.Millisecond), err, logTail())
	}
	t.Logf("StopPodSandbox returned after %s", time.Since(start).Round(time.Millisecond))
	if st := p.status(c); st.State != rt.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("container after StopPodSandbox: %v, exit code %d; want exited with 137 (killed)", st.State, st.ExitCode)
	}
	var left []string
	if !waitFor(60*time.Second, func() bool { left = p.processes(""); return len(left) == 0 }) {
		t.Errorf("60s after StopPodSandbox the pod's shim or VM still runs: %v", left)
	}
}
