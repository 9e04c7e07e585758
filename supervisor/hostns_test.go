package supervisor

import (
	"errors"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
)

func TestRefuseHostIPC(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ns      []specs.LinuxNamespace
		refused bool
	}{
		{"own IPC namespace", []specs.LinuxNamespace{{Type: specs.IPCNamespace}}, false},
		{"IPC joined by path (a pod member)", []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}}, false},
		{"host IPC", []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := refuseHostIPC("c", &specs.Spec{Linux: &specs.Linux{Namespaces: tc.ns}})
			if tc.refused != (err != nil) {
				t.Fatalf("refused = %v (%v), want %v", err != nil, err, tc.refused)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %v is not an invalid argument", err)
			}
		})
	}
}
