package convert

import (
	"reflect"
	"slices"
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/api/ocispec"
)

func baseSpec() *specs.Spec {
	s := specconv.Example() // runc's default spec, as `runc spec` writes it
	s.Process.Args = []string{"uname", "-r"}
	return s
}

func guest(id string) GuestSpec {
	return GuestSpec{ContainerID: id, ShareDir: agentproto.SharePath, Rootfs: id + "/rootfs"}
}

func mountIndex(ms []specs.Mount, dest string) int {
	return slices.IndexFunc(ms, func(m specs.Mount) bool { return m.Destination == dest })
}

func TestAdjustSpecRootCgroupHooks(t *testing.T) {
	in := baseSpec()
	in.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/host-only"}}}
	in.Linux.CgroupsPath = "system.slice:docker:abc"
	out, err := AdjustSpec(in, guest("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if out.Root.Path != agentproto.SharePath+"/c1/rootfs" {
		t.Errorf("root %q", out.Root.Path)
	}
	if out.Hooks != nil {
		t.Error("hooks kept: they would run host binaries in the guest")
	}
	if out.Linux.CgroupsPath != "/runv/c1" {
		t.Errorf("cgroups path %q", out.Linux.CgroupsPath)
	}
}

func TestAdjustSpecDevTmpfs(t *testing.T) {
	t.Run("default spec keeps its /dev", func(t *testing.T) {
		in := baseSpec()
		out, err := AdjustSpec(in, guest("c"))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(out.Mounts, in.Mounts) {
			t.Errorf("mounts changed:\n%v\n%v", in.Mounts, out.Mounts)
		}
	})
	t.Run("missing /dev is added before /dev/pts", func(t *testing.T) {
		in := baseSpec()
		in.Mounts = slices.DeleteFunc(in.Mounts, func(m specs.Mount) bool { return m.Destination == "/dev" })
		out, err := AdjustSpec(in, guest("c"))
		if err != nil {
			t.Fatal(err)
		}
		dev, pts := mountIndex(out.Mounts, "/dev"), mountIndex(out.Mounts, "/dev/pts")
		if dev < 0 || out.Mounts[dev].Type != "tmpfs" {
			t.Fatalf("no tmpfs /dev in %v", out.Mounts)
		}
		if pts >= 0 && dev > pts {
			t.Errorf("/dev at %d after /dev/pts at %d: it would hide it", dev, pts)
		}
	})
	t.Run("no mounts at all", func(t *testing.T) {
		in := baseSpec()
		in.Mounts = nil
		out, err := AdjustSpec(in, guest("c"))
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Mounts) != 1 || out.Mounts[0].Destination != "/dev" || out.Mounts[0].Type != "tmpfs" {
			t.Fatalf("mounts %v", out.Mounts)
		}
	})
	t.Run("bind /dev is replaced", func(t *testing.T) {
		in := baseSpec()
		i := mountIndex(in.Mounts, "/dev")
		in.Mounts[i] = specs.Mount{Destination: "/dev", Type: "bind", Source: "/dev", Options: []string{"rbind"}}
		out, err := AdjustSpec(in, guest("c"))
		if err != nil {
			t.Fatal(err)
		}
		var devs []specs.Mount
		for _, m := range out.Mounts {
			if m.Destination == "/dev" {
				devs = append(devs, m)
			}
		}
		if len(devs) != 1 || devs[0].Type != "tmpfs" {
			t.Fatalf("/dev mounts %v, want one tmpfs", devs)
		}
	})
}

func TestAdjustSpecBindSources(t *testing.T) {
	in := baseSpec()
	in.Mounts = append(in.Mounts,
		specs.Mount{Destination: "/data", Type: "bind", Source: "c/volumes/0", Options: []string{"rbind"}},
		specs.Mount{Destination: "/abs", Source: agentproto.SharePath + "/c/volumes/1", Options: []string{"bind", "ro"}},
	)
	out, err := AdjustSpec(in, guest("c"))
	if err != nil {
		t.Fatal(err)
	}
	if m := out.Mounts[mountIndex(out.Mounts, "/data")]; m.Source != agentproto.SharePath+"/c/volumes/0" {
		t.Errorf("relative source → %q", m.Source)
	}
	if m := out.Mounts[mountIndex(out.Mounts, "/abs")]; m.Source != agentproto.SharePath+"/c/volumes/1" {
		t.Errorf("absolute guest source → %q", m.Source)
	}

	in = baseSpec()
	in.Mounts = append(in.Mounts, specs.Mount{Destination: "/x", Type: "bind", Source: "../../etc"})
	if _, err := AdjustSpec(in, guest("c")); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("escaping bind source: err %v, want invalid", err)
	}
	g := guest("c")
	g.Rootfs = "../../"
	if _, err := AdjustSpec(baseSpec(), g); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("escaping rootfs: err %v, want invalid", err)
	}
}

// The combined pod-membership decision on namespaces, from the spec a client wrote to the
// guest's: the host's part (ocispec.GuestNamespaces: paths dropped, PID sharing kept as a
// flag) and the agent's (guestNamespaces, from the pod's pinned namespaces). Which pod a
// container joins is the CLI's decision (cmd/runv podselect_test.go).
func TestPodMembershipNamespaces(t *testing.T) {
	ns := func(t specs.LinuxNamespaceType, path string) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: t, Path: path}
	}
	pod := map[specs.LinuxNamespaceType]string{specs.IPCNamespace: "/run/runv/ns/ipc", specs.UTSNamespace: "/run/runv/ns/uts"}
	const sandboxPID = "/proc/7/ns/pid"
	// As containerd's CRI writes a pod member sharing the sandbox's PID namespace.
	criMember := []specs.LinuxNamespace{
		ns(specs.PIDNamespace, "/proc/4242/ns/pid"), ns(specs.NetworkNamespace, "/var/run/netns/cni-1"),
		ns(specs.IPCNamespace, "/proc/4242/ns/ipc"), ns(specs.UTSNamespace, "/proc/4242/ns/uts"),
		ns(specs.MountNamespace, ""),
	}
	for _, tt := range []struct {
		name       string
		in         []specs.LinuxNamespace
		pod        map[specs.LinuxNamespaceType]string // nil: the pod's first container
		sandboxPID string
		want       []specs.LinuxNamespace
		wantKind   string
	}{
		{name: "first container, or one that only shares the VM: fresh namespaces, host paths dropped, no network namespace", in: criMember,
			want: []specs.LinuxNamespace{ns(specs.PIDNamespace, ""), ns(specs.IPCNamespace, ""), ns(specs.UTSNamespace, ""), ns(specs.MountNamespace, "")}},
		{name: "member sharing the PID namespace", in: criMember, pod: pod, sandboxPID: sandboxPID,
			want: []specs.LinuxNamespace{ns(specs.PIDNamespace, sandboxPID), ns(specs.IPCNamespace, pod[specs.IPCNamespace]),
				ns(specs.UTSNamespace, pod[specs.UTSNamespace]), ns(specs.MountNamespace, "")}},
		{name: "member joins the pod's IPC and UTS after the sandbox exited", pod: pod,
			in:   []specs.LinuxNamespace{ns(specs.PIDNamespace, ""), ns(specs.IPCNamespace, "/proc/4242/ns/ipc"), ns(specs.UTSNamespace, "")},
			want: []specs.LinuxNamespace{ns(specs.PIDNamespace, ""), ns(specs.IPCNamespace, pod[specs.IPCNamespace]), ns(specs.UTSNamespace, pod[specs.UTSNamespace])}},
		{name: "member listing neither IPC nor UTS gets the pod's", pod: pod,
			in:   []specs.LinuxNamespace{ns(specs.MountNamespace, ""), ns(specs.UserNamespace, "/proc/4242/ns/user")},
			want: []specs.LinuxNamespace{ns(specs.MountNamespace, ""), ns(specs.UserNamespace, ""), ns(specs.IPCNamespace, pod[specs.IPCNamespace]), ns(specs.UTSNamespace, pod[specs.UTSNamespace])}},
		{name: "member sharing the PID namespace of a sandbox that exited", in: criMember, pod: pod,
			wantKind: agentproto.KindState},
		{name: "first container naming a PID namespace gets its own", in: []specs.LinuxNamespace{ns(specs.PIDNamespace, "/proc/1/ns/pid")},
			want: []specs.LinuxNamespace{ns(specs.PIDNamespace, "")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sent, sharePID := ocispec.GuestNamespaces(tt.in)
			g := guest("c")
			g.PodNamespaces, g.SharePID, g.SandboxPID = tt.pod, sharePID, tt.sandboxPID
			in := baseSpec()
			in.Linux.Namespaces = sent
			out, err := AdjustSpec(in, g)
			if tt.wantKind != "" {
				if kindOf(err) != tt.wantKind {
					t.Fatalf("got %v, want an error of kind %s", err, tt.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(out.Linux.Namespaces, tt.want) {
				t.Errorf("namespaces %v, want %v", out.Linux.Namespaces, tt.want)
			}
		})
	}
}

func TestAdjustSpecResolvConf(t *testing.T) {
	g := guest("c")
	g.ResolvConf = "/run/runv/resolv.conf"
	out, err := AdjustSpec(baseSpec(), g)
	if err != nil {
		t.Fatal(err)
	}
	i := mountIndex(out.Mounts, "/etc/resolv.conf")
	if i < 0 || out.Mounts[i].Source != g.ResolvConf || !slices.Contains(out.Mounts[i].Options, "ro") {
		t.Fatalf("resolv.conf mount missing or wrong: %v", out.Mounts)
	}
	// A spec with its own resolv.conf (docker, CRI) keeps it.
	in := baseSpec()
	in.Mounts = append(in.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: "c/volumes/3"})
	out, err = AdjustSpec(in, g)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(slices.DeleteFunc(slices.Clone(out.Mounts), func(m specs.Mount) bool { return m.Destination != "/etc/resolv.conf" })); n != 1 {
		t.Fatalf("%d resolv.conf mounts, want 1", n)
	}
}

func TestAdjustSpecRejects(t *testing.T) {
	if _, err := AdjustSpec(nil, guest("c")); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("nil spec: %v", err)
	}
	s := baseSpec()
	s.Process.Args = nil
	if _, err := AdjustSpec(s, guest("c")); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("no args: %v", err)
	}
}

// A container allowed every device (privileged) gets the VM's devices in place of the
// host's its spec lists; any other keeps its spec's.
func TestAdjustSpecPrivilegedDevices(t *testing.T) {
	hostDevice := specs.LinuxDevice{Path: "/dev/zram0", Type: "b", Major: 253}
	vmDevice := specs.LinuxDevice{Path: "/dev/vda", Type: "b", Major: 254}
	allowAll := specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"}
	denyAll := specs.LinuxDeviceCgroup{Allow: false, Access: "rwm"}
	fuse := int64(10)
	for _, tc := range []struct {
		name  string
		rules []specs.LinuxDeviceCgroup
		want  []specs.LinuxDevice
	}{
		{"privileged", []specs.LinuxDeviceCgroup{denyAll, allowAll}, []specs.LinuxDevice{vmDevice}},
		{"privileged, type a", []specs.LinuxDeviceCgroup{{Allow: true, Type: "a", Access: "rwm"}}, []specs.LinuxDevice{vmDevice}},
		{"default rules", []specs.LinuxDeviceCgroup{denyAll}, []specs.LinuxDevice{hostDevice}},
		{"all allowed, then denied", []specs.LinuxDeviceCgroup{allowAll, denyAll}, []specs.LinuxDevice{hostDevice}},
		{"read-only on all", []specs.LinuxDeviceCgroup{denyAll, {Allow: true, Access: "r"}}, []specs.LinuxDevice{hostDevice}},
		{"one major", []specs.LinuxDeviceCgroup{denyAll, {Allow: true, Type: "c", Major: &fuse, Access: "rwm"}}, []specs.LinuxDevice{hostDevice}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := baseSpec()
			in.Linux.Devices = []specs.LinuxDevice{hostDevice}
			in.Linux.Resources = &specs.LinuxResources{Devices: tc.rules}
			g := guest("c1")
			g.VMDevices = func() ([]specs.LinuxDevice, error) { return []specs.LinuxDevice{vmDevice}, nil }
			out, err := AdjustSpec(in, g)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(out.Linux.Devices, tc.want) {
				t.Errorf("devices %+v, want %+v", out.Linux.Devices, tc.want)
			}
		})
	}
}
