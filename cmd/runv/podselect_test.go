package main

import (
	"errors"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
)

func TestPodMembership(t *testing.T) {
	store := &state.Store{Root: filepath.Join(t.TempDir(), "root")}
	h, err := store.Create("sb")
	if err != nil {
		t.Fatal(err)
	}
	h.Save(&state.Container{ID: "sb", Pod: "p-1", Shim: state.Process{Pid: 4242}})
	h.Unlock()

	withNS := func(path string, typ specs.LinuxNamespaceType) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: typ, Path: path}}}}
	}
	tests := []struct {
		name    string
		spec    *specs.Spec
		wantPod string
		wantErr error
	}{
		{"plain container: own pod", &specs.Spec{}, "", nil},
		{"containerd sandbox itself", &specs.Spec{Annotations: map[string]string{annotationCRIContainerType: "sandbox", annotationCRISandboxID: "new"}}, "", nil},
		{"containerd container", &specs.Spec{Annotations: map[string]string{annotationCRIContainerType: "container", annotationCRISandboxID: "sb"}}, "p-1", nil},
		{"CRI-O container", &specs.Spec{Annotations: map[string]string{annotationCRIOContainerTyp: "container", annotationCRIOSandboxID: "sb"}}, "p-1", nil},
		{"unknown sandbox", &specs.Spec{Annotations: map[string]string{annotationCRISandboxID: "nope"}}, "", errdefs.ErrNotFound},
		{"netns of a runv container", withNS("/proc/4242/ns/net", specs.NetworkNamespace), "p-1", nil},
		{"netns of some host process", withNS("/proc/1/ns/net", specs.NetworkNamespace), "", nil},
		{"CNI netns file", withNS("/var/run/netns/cni-1", specs.NetworkNamespace), "", nil},
		{"mount ns of a runv container", withNS("/proc/4242/ns/mnt", specs.MountNamespace), "", errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := podMembership(store, "new", tt.spec)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if rec != nil {
				got = rec.Pod
			}
			if got != tt.wantPod {
				t.Fatalf("pod %q, want %q", got, tt.wantPod)
			}
		})
	}
}
