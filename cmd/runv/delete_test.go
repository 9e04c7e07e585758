package main

import (
	"context"
	"errors"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/shim"
	"github.com/runv-project/runv/internal/state"
)

// runc's `delete --force` of a container that does not exist succeeds: containerd's runc
// shim runs it after its own delete, podman after a failed create.
func TestDeleteForceOfMissingContainerSucceeds(t *testing.T) {
	g := &globals{root: t.TempDir()}
	g.store = &state.Store{Root: g.root}
	if err := deleteContainer(context.Background(), g, "nothere", true); err != nil {
		t.Errorf("delete --force of a missing container: %v, want success", err)
	}
	if err := deleteContainer(context.Background(), g, "nothere", false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("delete of a missing container: %v, want not found", err)
	}
}

// A foreground run whose pod ended with its container returns without waiting for the pod
// daemon and QEMU to be gone only when nothing of the host's is left for it: a network
// namespace the pod mirrors, a poststop hook or a host cgroup keeps the wait.
func TestForegroundPodEndsOnItsOwn(t *testing.T) {
	hook := []specs.Hook{{Path: "/bin/true"}}
	netns := &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/x"}}}
	for _, tt := range []struct {
		name string
		rec  state.Container
		own  bool
	}{
		{name: "new network namespace, no hooks", rec: state.Container{Sandbox: true, Spec: &specs.Spec{}}, own: true},
		{name: "poststart hook", rec: state.Container{Sandbox: true, Spec: &specs.Spec{Hooks: &specs.Hooks{Poststart: hook}}}, own: true},
		{name: "poststop hook", rec: state.Container{Sandbox: true, Spec: &specs.Spec{Hooks: &specs.Hooks{Poststop: hook}}}},
		{name: "a network namespace to mirror", rec: state.Container{Sandbox: true, Spec: &specs.Spec{Linux: netns}}},
		{name: "a host cgroup", rec: state.Container{Sandbox: true, Spec: &specs.Spec{}, HostCgroup: &shim.Cgroup{}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := tt.rec
			rec.ID, rec.Shim = "c", state.Self()
			if got := endsOnItsOwn(&rec); got != tt.own {
				t.Errorf("endsOnItsOwn = %v, want %v", got, tt.own)
			}
		})
	}
}
