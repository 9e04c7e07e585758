package convert

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer/configs"
)

func TestFastExecFallback(t *testing.T) {
	base := func() (*configs.Config, *Process) {
		return &configs.Config{
				Cgroups:    &cgroups.Cgroup{},
				Namespaces: configs.Namespaces{{Type: configs.NEWNS}, {Type: configs.NEWPID}, {Type: configs.NEWUTS}, {Type: configs.NEWIPC}},
				Seccomp:    &configs.Seccomp{DefaultAction: configs.Errno, Syscalls: []*configs.Syscall{{Name: "read", Action: configs.Allow}}},
			},
			&Process{Args: []string{"true"}}
	}
	prio := &configs.IOPriority{}
	for _, tc := range []struct {
		name   string
		change func(*configs.Config, *Process)
		want   string
	}{
		{"a plain exec", func(*configs.Config, *Process) {}, ""},
		{"terminal, caps, rlimits, user", func(c *configs.Config, p *Process) {
			p.UID, p.Capabilities = 1000, &configs.Capabilities{Bounding: []string{"CAP_KILL"}}
			p.Rlimits = []configs.Rlimit{{Type: 7, Soft: 1, Hard: 2}}
		}, ""},
		{"process AppArmor", func(_ *configs.Config, p *Process) { p.AppArmorProfile = "x" }, "AppArmor profile"},
		{"container AppArmor", func(c *configs.Config, _ *Process) { c.AppArmorProfile = "x" }, "AppArmor profile"},
		{"SELinux", func(_ *configs.Config, p *Process) { p.Label = "x" }, "SELinux label"},
		{"scheduler", func(c *configs.Config, _ *Process) { c.Scheduler = &configs.Scheduler{} }, "scheduler"},
		{"I/O priority", func(_ *configs.Config, p *Process) { p.IOPriority = prio }, "I/O priority"},
		{"personality", func(c *configs.Config, _ *Process) { c.Personality = &configs.LinuxPersonality{} }, "personality"},
		{"memory policy", func(c *configs.Config, _ *Process) { c.MemoryPolicy = &configs.LinuxMemoryPolicy{} }, "memory policy"},
		{"CPU affinity", func(_ *configs.Config, p *Process) { p.CPUAffinity = &configs.CPUAffinity{} }, "CPU affinity"},
		{"user namespace", func(c *configs.Config, _ *Process) {
			c.Namespaces = append(c.Namespaces, configs.Namespace{Type: configs.NEWUSER})
		}, "user namespace"},
		{"rootless", func(c *configs.Config, _ *Process) { c.RootlessEUID = true }, "rootless"},
		{"seccomp notify", func(c *configs.Config, _ *Process) {
			c.Seccomp.Syscalls = append(c.Seccomp.Syscalls, &configs.Syscall{Name: "mount", Action: configs.Notify})
		}, "seccomp notify"},
		{"seccomp listener", func(c *configs.Config, _ *Process) { c.Seccomp.ListenerPath = "/x" }, "seccomp notify"},
		{"sub-cgroup", func(_ *configs.Config, p *Process) { p.SubCgroupPaths = map[string]string{"": "x"} }, "sub-cgroup"},
		{"no cgroup", func(c *configs.Config, _ *Process) { c.Cgroups = nil }, "no cgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, p := base()
			tc.change(c, p)
			if got := FastExecFallback(c, p); got != tc.want {
				t.Fatalf("FastExecFallback = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPrepareExecEnv(t *testing.T) {
	for _, tc := range []struct {
		in       []string
		want     []string
		needHome bool
		err      string
	}{
		{[]string{"A=1", "B=2", "A=3"}, []string{"B=2", "A=3"}, true, ""},
		{[]string{"HOME=/root", "X="}, []string{"HOME=/root", "X="}, false, ""},
		{[]string{"HOME=/root", "HOME="}, nil, true, ""},
		{[]string{"NOEQUALS"}, nil, false, "missing '='"},
		{[]string{"=x"}, nil, false, "name cannot be empty"},
		{[]string{"A=x\x00y"}, nil, false, "nul byte"},
	} {
		got, needHome, err := PrepareExecEnv(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("PrepareExecEnv(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) || needHome != tc.needHome {
			t.Errorf("PrepareExecEnv(%q) = %q, %v, %v; want %q, %v", tc.in, got, needHome, err, tc.want, tc.needHome)
		}
	}
}

// The request's framing as the helper checks it: magic, total length, fields that add up.
func TestExecRequestEncoding(t *testing.T) {
	umask := uint32(0o22)
	r := &ExecRequest{UID: 1, GID: 2, Cwd: "/w", Args: []string{"sh", "-c", "x"}, Env: []string{"A=1"},
		Umask: &umask, ConsoleFD: -1, Namespaces: []ExecNamespace{{NSType: 0x20000, FD: 5}}}
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:4]) != ExecMagic || int(binary.LittleEndian.Uint32(b[4:])) != len(b)-8 {
		t.Fatalf("header %q, length %d of %d", b[:4], binary.LittleEndian.Uint32(b[4:]), len(b)-8)
	}
	fields := map[uint16][]byte{}
	for tag, f := range requestFields(t, b) {
		fields[tag] = f[len(f)-1]
	}
	if got := fields[tagArgs]; !bytes.Equal(got, []byte("sh\x00-c\x00x\x00")) {
		t.Errorf("args field %q", got)
	}
	if got := fields[tagNS]; !bytes.Equal(got, []byte{0, 0, 2, 0, 5, 0, 0, 0}) {
		t.Errorf("namespace field %x", got)
	}
	if _, ok := fields[tagConsole]; ok {
		t.Error("a console field without a terminal")
	}
	r.Args = []string{"a\x00b"}
	if _, err := r.Encode(); err == nil {
		t.Error("an argument with a NUL byte was encoded")
	}
}
