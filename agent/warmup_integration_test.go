//go:build integration

package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runv-project/runv/api/agentproto"
)

// The warm-ups of a pooled VM, in the pool's order: the pod's start (no container), a light
// one (the throwaway container only: no exec into it, no network warm-up), a full one (as
// the pool finishes a light-warmed VM: everything); a pod then starts and runs its
// container in that VM.
func TestVMWarmupScopes(t *testing.T) {
	v := bootVM(t, vmOptions{})
	v.event(agentproto.MsgReady)
	var pod, light, full agentproto.Warmup
	v.mustCall(agentproto.MsgWarmup, agentproto.WarmupRequest{ShareTag: agentproto.ShareTag, Scope: agentproto.WarmupPod, Entropy: make([]byte, 64)}, &pod)
	if pod.CreateMillis != 0 {
		t.Errorf("the pod's start's warm-up created a container (in %d ms)", pod.CreateMillis)
	}
	// The light one on a rootfs the host made in the share (as a pool's holder does): the
	// agent uses it and leaves it to the host; the full one makes and removes its own.
	hostDir := filepath.Join(v.share, agentproto.WarmupShareDir)
	if err := agentproto.MakeWarmupRootfs(filepath.Join(hostDir, "rootfs")); err != nil {
		t.Fatal(err)
	}
	v.mustCall(agentproto.MsgWarmup, agentproto.WarmupRequest{ShareTag: agentproto.ShareTag, Scope: agentproto.WarmupContainer, HostRootfs: true}, &light)
	if _, err := os.Stat(filepath.Join(hostDir, "rootfs", "etc", "passwd")); err != nil {
		t.Errorf("the agent removed the rootfs the host made: %v", err)
	}
	if err := os.RemoveAll(hostDir); err != nil {
		t.Fatal(err)
	}
	v.mustCall(agentproto.MsgWarmup, agentproto.WarmupRequest{ShareTag: agentproto.ShareTag}, &full)
	if _, err := os.Stat(hostDir); !os.IsNotExist(err) {
		t.Errorf("the full warm-up left its rootfs in the share: %v", err)
	}
	t.Logf("light warm-up: created in %d ms, gone after %d; full after it: %d, %d", light.CreateMillis, light.TotalMillis, full.CreateMillis, full.TotalMillis)
	v.waitConsole("warm-up of the pod's start", 1)
	// The light warm-up's program is the exec helper, the full one's the agent (warmupProgram).
	v.waitConsole(`(scope: "container", program `+execHelperPath+`)`, 1)
	v.waitConsole(`(scope: "", program /init)`, 1)
	if _, ran := v.consoleHas(`(scope: "pod"`); ran {
		t.Error(`a warm-up container ran for scope "pod"`)
	}
	v.waitConsole("network warm-up:", 1)
	// The console is in order: no network warm-up before the full warm-up's container.
	v.mu.Lock()
	network, fullSeen := 0, false
	for _, l := range v.console {
		fullSeen = fullSeen || strings.Contains(l.text, `(scope: ""`)
		if strings.Contains(l.text, "network warm-up:") && !fullSeen {
			network++
		}
	}
	v.mu.Unlock()
	if network != 0 || !fullSeen {
		v.dumpConsole()
		t.Fatalf("network warm-ups before the full warm-up's container: %d (full warm-up seen: %v), want 0", network, fullSeen)
	}

	v.startPod("pod1")
	rootfs, spec := v.busyboxContainer("c1", "echo", "after-warmups")
	hp, _, err := v.newContainer("c1", spec, rootfs, true)
	if err != nil {
		t.Fatalf("NEWCONTAINER: %v", err)
	}
	v.mustCall(agentproto.MsgStartContainer, agentproto.ContainerRef{Container: "c1"}, nil)
	if out := v.output(hp.stdout); !strings.Contains(out, "after-warmups") {
		t.Errorf("container output %q", out)
	}
	if exit := v.exitOf("c1", agentproto.InitProcessID); exit.ExitCode != 0 {
		t.Errorf("exit %+v", exit)
	}
	destroy(t, v)
}

// A template's warm-up (Settle, as factory's parkAgent asks) answers only once the guest
// has run what its boot and the warm-up left scheduled: the TSC clocksource registered,
// the warm-up's cgroup released. A fast guest ends its warm-up before the clocksource's
// delayed work (a second after boot), so the wait is seen.
func TestVMWarmupSettles(t *testing.T) {
	v := bootVM(t, vmOptions{})
	v.event(agentproto.MsgReady)
	var w agentproto.Warmup
	v.mustCall(agentproto.MsgWarmup, agentproto.WarmupRequest{Settle: true}, &w)
	if w.Unsettled != "" {
		v.dumpConsole()
		t.Fatalf("the warm-up answered with %q still pending after %d ms", w.Unsettled, w.SettleMillis)
	}
	t.Logf("warm-up: created in %d ms, gone after %d; settled after %d ms more", w.CreateMillis, w.TotalMillis, w.SettleMillis)
	destroy(t, v)
}
