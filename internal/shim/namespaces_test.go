package shim

import (
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestForSpec(t *testing.T) {
	mapping := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 10}}
	for _, tc := range []struct {
		name string
		ns   []specs.LinuxNamespace
		maps []specs.LinuxIDMapping
		want Namespaces
	}{
		{name: "none"},
		{
			name: "new ones",
			ns:   []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace}, {Type: specs.TimeNamespace}},
			want: Namespaces{Clone: unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWNS},
		},
		{
			name: "joined by path",
			ns:   []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/netns/a"}, {Type: specs.UTSNamespace}},
			want: Namespaces{Clone: unix.CLONE_NEWUTS, Join: map[uintptr]string{unix.CLONE_NEWNET: "/run/netns/a"}},
		},
		{
			name: "user with mappings",
			ns:   []specs.LinuxNamespace{{Type: specs.UserNamespace}},
			maps: mapping,
			want: Namespaces{Clone: unix.CLONE_NEWUSER,
				UIDMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 1000, Size: 10}},
				GIDMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 1000, Size: 10}}},
		},
		{
			// An existing user namespace cannot be entered by a Go process: not mirrored.
			name: "user by path",
			ns:   []specs.LinuxNamespace{{Type: specs.UserNamespace, Path: "/proc/1/ns/user"}},
			maps: mapping,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Linux: &specs.Linux{Namespaces: tc.ns, UIDMappings: tc.maps, GIDMappings: tc.maps}}
			if got := ForSpec(spec); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ForSpec = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestStartEntersAndCreates starts a process that joins a network namespace by path and
// gets a UTS namespace of its own, and one that takes those of the first (Of).
func TestStartEntersAndCreates(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: creates and enters namespaces")
	}
	holder := exec.Command("sleep", "100")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	netns := "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/net"

	first := exec.Command("sleep", "100")
	if err := Start(first, Namespaces{Clone: unix.CLONE_NEWUTS, Join: map[uintptr]string{unix.CLONE_NEWNET: netns, unix.CLONE_NEWNS: "/proc/self/ns/mnt"}}); err != nil {
		t.Fatal(err)
	}
	defer func() { first.Process.Kill(); first.Wait() }()
	assertSame(t, first.Process.Pid, "net", netns, true)
	assertSame(t, first.Process.Pid, "uts", "/proc/self/ns/uts", false)
	assertSame(t, os.Getpid(), "net", netns, false) // we stayed where we were

	n, err := Of(first.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	second := exec.Command("sleep", "100")
	if err := Start(second, n); err != nil {
		t.Fatal(err)
	}
	defer func() { second.Process.Kill(); second.Wait() }()
	for _, kind := range []string{"net", "uts", "mnt", "pid"} {
		assertSame(t, second.Process.Pid, kind, "/proc/"+strconv.Itoa(first.Process.Pid)+"/ns/"+kind, true)
	}

	if err := Start(exec.Command("true"), Namespaces{Join: map[uintptr]string{unix.CLONE_NEWNET: "/no/such/ns"}}); err == nil {
		t.Error("Start with a missing namespace path succeeded")
	}
}

func assertSame(t *testing.T, pid int, kind, other string, want bool) {
	t.Helper()
	same, err := sameNamespace("/proc/"+strconv.Itoa(pid)+"/ns/"+kind, other)
	if err != nil {
		t.Fatal(err)
	}
	if same != want {
		t.Errorf("process %d %s namespace same as %s: %v, want %v", pid, kind, other, same, want)
	}
}
