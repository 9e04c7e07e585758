package supervisor

import (
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestGuestNamespaces(t *testing.T) {
	ns := func(list ...specs.LinuxNamespace) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Namespaces: list}}
	}
	n := func(t specs.LinuxNamespaceType, path string) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: t, Path: path}
	}
	tests := []struct {
		name       string
		spec       *specs.Spec
		sandboxPid int
		want       []specs.LinuxNamespace
	}{
		{
			name: "own pod: host paths dropped",
			spec: ns(n(specs.PIDNamespace, ""), n(specs.NetworkNamespace, "/var/run/netns/cni-1"), n(specs.MountNamespace, "")),
			want: []specs.LinuxNamespace{n(specs.PIDNamespace, ""), n(specs.NetworkNamespace, ""), n(specs.MountNamespace, "")},
		},
		{
			name:       "pod member: net ipc uts joined, pid and mnt private",
			spec:       ns(n(specs.PIDNamespace, ""), n(specs.NetworkNamespace, "/proc/77/ns/net"), n(specs.IPCNamespace, ""), n(specs.UTSNamespace, ""), n(specs.MountNamespace, "")),
			sandboxPid: 42,
			want: []specs.LinuxNamespace{n(specs.PIDNamespace, ""), n(specs.NetworkNamespace, "/proc/42/ns/net"), n(specs.IPCNamespace, "/proc/42/ns/ipc"),
				n(specs.UTSNamespace, "/proc/42/ns/uts"), n(specs.MountNamespace, "")},
		},
		{
			name:       "pod member asking for the sandbox's pid namespace",
			spec:       ns(n(specs.PIDNamespace, "/proc/77/ns/pid"), n(specs.NetworkNamespace, "/proc/77/ns/net"), n(specs.MountNamespace, "")),
			sandboxPid: 42,
			want: []specs.LinuxNamespace{n(specs.PIDNamespace, "/proc/42/ns/pid"), n(specs.NetworkNamespace, "/proc/42/ns/net"), n(specs.MountNamespace, ""),
				n(specs.IPCNamespace, "/proc/42/ns/ipc"), n(specs.UTSNamespace, "/proc/42/ns/uts")},
		},
		{
			name:       "pod member without a linux section",
			spec:       &specs.Spec{},
			sandboxPid: 9,
			want:       []specs.LinuxNamespace{n(specs.NetworkNamespace, "/proc/9/ns/net"), n(specs.IPCNamespace, "/proc/9/ns/ipc"), n(specs.UTSNamespace, "/proc/9/ns/uts")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			guestNamespaces(tt.spec, tt.sandboxPid)
			if got := tt.spec.Linux.Namespaces; !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("namespaces:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}
