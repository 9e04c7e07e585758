package convert

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// engineConfig is a configuration the create engine makes: runc's default mounts and paths.
func engineConfig() (*configs.Config, *Process) {
	return &configs.Config{
			Rootfs:     "/run/runv/share/c/rootfs",
			Cgroups:    &cgroups.Cgroup{Resources: &cgroups.Resources{}},
			Namespaces: configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}, {Type: configs.NEWUTS}, {Type: configs.NEWIPC, Path: "/run/runv/ns/ipc"}},
			Mounts: []*configs.Mount{
				{Source: "proc", Destination: "/proc", Device: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
				{Source: "tmpfs", Destination: "/dev", Device: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_STRICTATIME, Data: "mode=755"},
				{Source: "/run/runv/share/v", Destination: "/data", Device: "bind", Flags: unix.MS_BIND | unix.MS_REC, ClearedFlags: unix.MS_RDONLY,
					PropagationFlags: []int{unix.MS_PRIVATE}},
			},
			Devices:       []*config.Device{{Path: "/dev/null", Rule: config.Rule{Type: config.CharDevice, Major: 1, Minor: 3}, FileMode: 0o666}},
			MaskPaths:     []string{"/proc/kcore"},
			ReadonlyPaths: []string{"/proc/sys"},
			Hostname:      "h",
			Sysctl:        map[string]string{"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20"},
		},
		&Process{Args: []string{"true"}, Init: true}
}

func TestCreateFallback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*configs.Config, *Process)
		want   string
	}{
		{"runc's default container", func(*configs.Config, *Process) {}, ""},
		{"what the exec helper does not do", func(c *configs.Config, _ *Process) { c.AppArmorProfile = "x" }, "AppArmor profile"},
		{"user namespace", func(c *configs.Config, _ *Process) {
			c.Namespaces = append(c.Namespaces, configs.Namespace{Type: configs.NEWUSER})
		}, "user namespace"},
		{"SELinux mount label", func(c *configs.Config, _ *Process) { c.MountLabel = "x" }, "SELinux mount label"},
		{"hooks", func(c *configs.Config, _ *Process) {
			c.Hooks = configs.Hooks{configs.Prestart: configs.HookList{configs.NewCommandHook(&configs.Command{Path: "/x"})}}
		}, "hooks"},
		{"no pivot_root", func(c *configs.Config, _ *Process) { c.NoPivotRoot = true }, "no pivot_root"},
		{"no mount namespace", func(c *configs.Config, _ *Process) { c.Namespaces = c.Namespaces[1:] }, "no mount namespace of its own"},
		{"a joined mount namespace", func(c *configs.Config, _ *Process) { c.Namespaces[0].Path = "/proc/1/ns/mnt" }, "no mount namespace of its own"},
		{"time namespace", func(c *configs.Config, _ *Process) {
			c.Namespaces = append(c.Namespaces, configs.Namespace{Type: configs.NEWTIME})
		}, "time namespace"},
		{"idmapped mount", func(c *configs.Config, _ *Process) {
			c.Mounts[2].IDMapping = &configs.MountIDMapping{}
		}, "mount /data: idmapped"},
		{"recursive read-only", func(c *configs.Config, _ *Process) {
			c.Mounts[2].RecAttr = &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		}, "mount /data: recursive mount attributes"},
		{"tmpcopyup", func(c *configs.Config, _ *Process) { c.Mounts[1].Extensions = configs.EXT_COPYUP }, "mount /dev: tmpcopyup"},
		{"a bind on /proc", func(c *configs.Config, _ *Process) { c.Mounts[0].Device = "bind" }, "mount /proc: not a proc mount on /proc"},
		{"a mount inside /proc", func(c *configs.Config, _ *Process) { c.Mounts[2].Destination = "/proc/uptime" }, "mount /proc/uptime: inside /proc"},
		{"a mount on the root", func(c *configs.Config, _ *Process) { c.Mounts[2].Destination = "/" }, "mount /: on the root"},
		{"a relative destination", func(c *configs.Config, _ *Process) { c.Mounts[2].Destination = "data" }, "mount data: relative destination"},
		{"an unknown device type", func(c *configs.Config, _ *Process) { c.Devices[0].Type = 'u' }, "device /dev/null of type u"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, p := engineConfig()
			tc.change(c, p)
			if got := CreateFallback(c, p); got != tc.want {
				t.Fatalf("CreateFallback = %q, want %q", got, tc.want)
			}
		})
	}
}

// requestFields splits an encoded request into its fields, repeated ones in order.
func requestFields(t *testing.T, b []byte) map[uint16][][]byte {
	t.Helper()
	fields := map[uint16][][]byte{}
	for body := b[8:]; len(body) > 0; {
		if len(body) < 8 {
			t.Fatalf("truncated field header: %x", body)
		}
		tag, n := binary.LittleEndian.Uint16(body), binary.LittleEndian.Uint32(body[4:])
		if int(n) > len(body)-8 {
			t.Fatalf("field %d longer than the rest", tag)
		}
		fields[tag] = append(fields[tag], body[8:8+n])
		body = body[8+n:]
	}
	return fields
}

func TestCreateRequestEncoding(t *testing.T) {
	cfg, _ := engineConfig()
	r := &ExecRequest{Args: []string{"true"}, ConsoleFD: -1, Create: NewCreateRequest(cfg)}
	r.Create.CgroupDir = "/sys/fs/cgroup/runv/c"
	r.Create.StartFD = 9
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	f := requestFields(t, b)
	le := binary.LittleEndian
	head := f[tagCreate][0]
	if flags := le.Uint32(head); flags != unix.CLONE_NEWNS|unix.CLONE_NEWPID|unix.CLONE_NEWUTS {
		t.Errorf("clone flags %#x: the joined IPC namespace is not created, the others are", flags)
	}
	if len(head) != 15 || le.Uint32(head[8:]) != 9 || head[12] != 0 || head[13] != 1 || head[14] != 0 {
		t.Errorf("create field %x: start fd 9, rootfs writable, /dev set up, the helper forks the init", head)
	}
	if _, ok := f[tagCgroup]; ok {
		t.Error("a cgroup directory for a container without a cgroup namespace")
	}
	if got := string(f[tagRootfs][0]); got != cfg.Rootfs {
		t.Errorf("rootfs %q", got)
	}
	if len(f[tagMount]) != 3 {
		t.Fatalf("%d mounts, want 3", len(f[tagMount]))
	}
	bind := f[tagMount][2]
	if le.Uint32(bind) != unix.MS_BIND|unix.MS_REC || le.Uint32(bind[4:]) != unix.MS_RDONLY || le.Uint32(bind[8:]) != 1 || le.Uint32(bind[12:]) != unix.MS_PRIVATE {
		t.Errorf("bind mount head %x", bind[:16])
	}
	if got := bind[16:]; !bytes.Equal(got, []byte("/run/runv/share/v\x00/data\x00bind\x00\x00")) {
		t.Errorf("bind mount strings %q", got)
	}
	dev := f[tagDevice][0]
	if le.Uint32(dev) != 'c' || le.Uint32(dev[4:]) != 1 || le.Uint32(dev[8:]) != 3 || le.Uint32(dev[12:]) != 0o666 || string(dev[24:]) != "/dev/null" {
		t.Errorf("device field %x", dev)
	}
	if s := f[tagSysctl]; len(s) != 2 || string(s[0]) != "fs.mqueue.msg_max\x0020\x00" || string(s[1]) != "kernel.shm_rmid_forced\x001\x00" {
		t.Errorf("sysctls %q, want both, sorted", s)
	}
	if string(f[tagHostname][0]) != "h" || string(f[tagMaskPath][0]) != "/proc/kcore" || string(f[tagROPath][0]) != "/proc/sys" {
		t.Errorf("hostname %q, masked %q, read-only %q", f[tagHostname], f[tagMaskPath], f[tagROPath])
	}

	cfg.Mounts = append(cfg.Mounts, &configs.Mount{Source: "/x", Destination: "/dev", Device: "bind", Flags: unix.MS_BIND})
	cfg.Namespaces = append(cfg.Namespaces, configs.Namespace{Type: configs.NEWCGROUP})
	r.Create = NewCreateRequest(cfg)
	r.Create.CgroupDir = "/sys/fs/cgroup/runv/c"
	if b, err = r.Encode(); err != nil {
		t.Fatal(err)
	}
	f = requestFields(t, b)
	if f[tagCreate][0][13] != 0 {
		t.Error("/dev set up although a bind brings it")
	}
	r.Create.InPlace = true
	if b, err = r.Encode(); err != nil {
		t.Fatal(err)
	}
	if f = requestFields(t, b); f[tagCreate][0][14] != 1 {
		t.Errorf("create field %x: the helper started as the init is not told so", f[tagCreate][0])
	}
	if got := f[tagCgroup]; len(got) != 1 || string(got[0]) != "/sys/fs/cgroup/runv/c" {
		t.Errorf("cgroup directory %q with a cgroup namespace", got)
	}
	cfg.Hostname = "a\x00b"
	r.Create = NewCreateRequest(cfg)
	if _, err := r.Encode(); err == nil {
		t.Error("a hostname with a NUL byte was encoded")
	}
}
