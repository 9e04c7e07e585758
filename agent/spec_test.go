package agent

import (
	"reflect"
	"slices"
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/api/agentproto"
)

func baseSpec() *specs.Spec {
	s := specconv.Example() // runc's default spec, as `runc spec` writes it
	s.Process.Args = []string{"uname", "-r"}
	return s
}

func guest(id string) guestSpec {
	return guestSpec{ContainerID: id, ShareDir: agentproto.SharePath, Rootfs: id + "/rootfs"}
}

func mountIndex(ms []specs.Mount, dest string) int {
	return slices.IndexFunc(ms, func(m specs.Mount) bool { return m.Destination == dest })
}

func TestAdjustSpecRootCgroupHooks(t *testing.T) {
	in := baseSpec()
	in.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/host-only"}}}
	in.Linux.CgroupsPath = "system.slice:docker:abc"
	before, _ := copySpec(in)
	out, err := adjustSpec(in, guest("c1"))
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
	if !reflect.DeepEqual(in, before) {
		t.Error("adjustSpec modified its input")
	}
}

func TestAdjustSpecDevTmpfs(t *testing.T) {
	t.Run("default spec keeps its /dev", func(t *testing.T) {
		in := baseSpec()
		out, err := adjustSpec(in, guest("c"))
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
		out, err := adjustSpec(in, guest("c"))
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
		out, err := adjustSpec(in, guest("c"))
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
		out, err := adjustSpec(in, guest("c"))
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
	out, err := adjustSpec(in, guest("c"))
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
	if _, err := adjustSpec(in, guest("c")); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("escaping bind source: err %v, want invalid", err)
	}
	g := guest("c")
	g.Rootfs = "../../"
	if _, err := adjustSpec(baseSpec(), g); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("escaping rootfs: err %v, want invalid", err)
	}
}

func TestAdjustSpecNamespaces(t *testing.T) {
	in := baseSpec()
	in.Linux.Namespaces = []specs.LinuxNamespace{
		{Type: specs.PIDNamespace, Path: "/proc/4242/ns/pid"},
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.IPCNamespace, Path: "/proc/4242/ns/ipc"},
		{Type: specs.UTSNamespace},
		{Type: specs.MountNamespace, Path: "/proc/4242/ns/mnt"},
	}
	// First container of the pod: host paths dropped, fresh namespaces.
	out, err := adjustSpec(in, guest("c"))
	if err != nil {
		t.Fatal(err)
	}
	want := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}}
	if !reflect.DeepEqual(out.Linux.Namespaces, want) {
		t.Errorf("first container namespaces %v, want %v", out.Linux.Namespaces, want)
	}
	// A later container joins the sandbox's.
	g := guest("c2")
	g.SandboxNS = map[specs.LinuxNamespaceType]string{specs.PIDNamespace: "/proc/7/ns/pid", specs.IPCNamespace: "/proc/7/ns/ipc"}
	out, err = adjustSpec(in, g)
	if err != nil {
		t.Fatal(err)
	}
	want = []specs.LinuxNamespace{
		{Type: specs.PIDNamespace, Path: "/proc/7/ns/pid"}, {Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc"},
		{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
	}
	if !reflect.DeepEqual(out.Linux.Namespaces, want) {
		t.Errorf("second container namespaces %v, want %v", out.Linux.Namespaces, want)
	}
}

func TestAdjustSpecResolvConf(t *testing.T) {
	g := guest("c")
	g.ResolvConf = "/run/runv/resolv.conf"
	out, err := adjustSpec(baseSpec(), g)
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
	out, err = adjustSpec(in, g)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(slices.DeleteFunc(slices.Clone(out.Mounts), func(m specs.Mount) bool { return m.Destination != "/etc/resolv.conf" })); n != 1 {
		t.Fatalf("%d resolv.conf mounts, want 1", n)
	}
}

func TestAdjustSpecRejects(t *testing.T) {
	if _, err := adjustSpec(nil, guest("c")); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("nil spec: %v", err)
	}
	s := baseSpec()
	s.Process.Args = nil
	if _, err := adjustSpec(s, guest("c")); kindOf(err) != agentproto.KindInvalid {
		t.Errorf("no args: %v", err)
	}
}
