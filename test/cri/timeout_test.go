//go:build integration

package cri

import (
	"strings"
	"testing"
	"time"

	rt "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIExecSyncTimeout: an ExecSync whose command outlives its timeout returns at the
// timeout, and the command no longer runs: the CRI kills it by SIGKILLing the pid the
// runtime gave (runv's host stand-in under the runc shim), which must end the process in
// the VM as it ends the process itself with runc. Before runv watched its stand-ins, the
// call returned after about 300 s and the command ran on in the guest.
//
// Handlers: runc for reference, runvrunc (runv under containerd's runc shim, the route the
// issue was found on) and runv (its own shim, which kills the exec in the VM on the CRI's
// Kill of the exec).
func TestCRIExecSyncTimeout(t *testing.T) {
	for _, h := range []string{"runc", "runvrunc", "runv"} {
		t.Run(h, func(t *testing.T) {
			p := runPod(t, h, nil)
			c := p.container("main", nil, "sleep", "1000")
			start := time.Now()
			_, err := runtimeSvc.ExecSync(ctx(t), &rt.ExecSyncRequest{ContainerId: c, Cmd: []string{"sleep", "904"}, Timeout: 1})
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "timeout") {
				t.Errorf("ExecSync of sleep 904 with a 1 s timeout: %v, want a timeout error", err)
			}
			if took > 30*time.Second {
				t.Errorf("ExecSync with a 1 s timeout returned after %s", took.Round(time.Millisecond))
			}
			var ps string
			if !waitFor(15*time.Second, func() bool {
				ps = p.out(c, "ps")
				return !strings.Contains(ps, "sleep 904")
			}) {
				t.Errorf("sleep 904 still runs in the container 15s after its ExecSync timed out:\n%s", ps)
			}
			t.Logf("ExecSync returned %s after it started (timeout 1 s); the command is gone", took.Round(time.Millisecond))
		})
	}
}
