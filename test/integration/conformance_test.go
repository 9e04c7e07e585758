//go:build integration

package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/test/bundle"
)

// What the OCI conformance suite (opencontainers/runtime-tools validation/, see
// test/conformance/run.sh) found, each checked here in one VM.

// preStatxProfile is a seccomp profile written before statx(2) existed: it allows every
// x86_64 syscall numbered below statx's (332), as the header of the host's kernel lists them,
// and errors everything else (runtime-tools' default profile is of that kind).
func preStatxProfile(t *testing.T) *specs.LinuxSeccomp {
	t.Helper()
	b, err := os.ReadFile("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
	if err != nil {
		t.Skipf("no syscall table to build the profile from: %v", err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`#define __NR_(\w+) (\d+)`).FindAllStringSubmatch(string(b), -1) {
		if nr, _ := strconv.Atoi(m[2]); nr < 332 {
			names = append(names, m[1])
		}
	}
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActErrno,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		Syscalls:      []specs.LinuxSyscall{{Names: names, Action: specs.ActAllow}},
	}
}

func TestConformanceSpecFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		edit  func(t *testing.T, s *specs.Spec, bundle string)
		args  []string
		match string // a regexp the container's stdout must match
	}{
		{
			// libcontainer's init calls statx(STATX_MNT_ID) after the filter is loaded.
			name: "seccomp profile without statx",
			edit: func(t *testing.T, s *specs.Spec, _ string) {
				s.Linux.Seccomp = preStatxProfile(t)
				s.Process.NoNewPrivileges = false
			},
			args:  []string{"sh", "-c", "ls / >/dev/null && echo ran"},
			match: `^ran\n$`,
		},
		{
			name: "seccomp profile without statx, no new privileges",
			edit: func(t *testing.T, s *specs.Spec, _ string) {
				s.Linux.Seccomp = preStatxProfile(t)
				s.Process.NoNewPrivileges = true
			},
			args:  []string{"sh", "-c", "echo ran"},
			match: `^ran\n$`,
		},
		{
			// Below what libcontainer's Go init reserves: the agent sets it after the exec.
			name: "RLIMIT_AS of 1 GiB",
			edit: func(_ *testing.T, s *specs.Spec, _ string) {
				s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_AS", Soft: 1 << 30, Hard: 2 << 30})
			},
			args:  []string{"sh", "-c", "grep 'Max address space' /proc/self/limits"},
			match: `Max address space\s+1073741824\s+2147483648\s+bytes`,
		},
		{
			name: "bind mount with filesystem options, under its source's name",
			edit: func(t *testing.T, s *specs.Spec, _ string) {
				src := filepath.Join(t.TempDir(), "volsrc")
				if err := os.Mkdir(src, 0o755); err != nil {
					t.Fatal(err)
				}
				s.Mounts = append(s.Mounts, specs.Mount{Destination: "/mnt/v", Source: src,
					Options: []string{"bind", "nosuid", "mode=755", "size=1k"}})
			},
			args:  []string{"sh", "-c", "grep ' /mnt/v ' /proc/self/mountinfo"},
			match: `/volsrc /mnt/v \S*nosuid`,
		},
		{
			name: "read-only device node and FIFO device",
			edit: func(t *testing.T, s *specs.Spec, b string) {
				if err := unix.Mknod(filepath.Join(b, "rootfs", "rodev"), unix.S_IFBLK|0o666, 0); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(filepath.Join(b, "rootfs", "rofifo"), unix.S_IFIFO|0o666, 0); err != nil {
					t.Fatal(err)
				}
				s.Linux.ReadonlyPaths = append(s.Linux.ReadonlyPaths, "/rodev", "/rofifo")
				mode := os.FileMode(0o660)
				s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/fifo1", Type: "p", Major: 8, Minor: 666, FileMode: &mode})
			},
			args:  []string{"sh", "-c", "grep -E ' /(rodev|rofifo) ' /proc/self/mountinfo | cut -d' ' -f5,6; test -p /dev/fifo1 && echo fifo"},
			match: `^/rodev ro,\S*\n/rofifo ro,\S*\nfifo\n$`,
		},
		{
			name: "user namespace",
			edit: func(_ *testing.T, s *specs.Spec, _ string) {
				s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
				s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 2000}}
				s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 3000}}
			},
			args:  []string{"sh", "-c", "cat /proc/self/uid_map; id -u; test -d /sys/kernel && echo sys"},
			match: `^\s*0\s+1000\s+2000\n0\nsys\n$`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := t.TempDir()
			s, err := bundle.Make(b, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(t, s, b)
			if err := bundle.WriteSpec(b, s); err != nil {
				t.Fatal(err)
			}
			r := runv(t, nil, "run", "--bundle", b, newID(t))
			if r.code != 0 {
				t.Fatalf("runv run: %s", r)
			}
			if !regexp.MustCompile(tt.match).MatchString(r.stdout) {
				t.Fatalf("output does not match %q: %s", tt.match, r)
			}
		})
	}
}

// A signal sent right after `start` reaches the program's handler: the agent answers start
// once the program is exec'd and holds a signal until the program has its handler and
// waits, as it would have on the host by the time a client's kill arrives.
func TestConformanceKillRightAfterStart(t *testing.T) {
	t.Parallel()
	r := newRoot(t)
	b := newBundleWith(t, func(s *specs.Spec) { s.Root.Readonly = false }, "sh", "-c", "trap 'touch /TERM' TERM; sleep 30 & wait $!")
	for i := 0; i < 2; i++ {
		id := newID(t)
		os.Remove(filepath.Join(b, "rootfs", "TERM"))
		mustRunv(t, r, "create", "--bundle", b, id)
		mustRunv(t, r, "start", id)
		mustRunv(t, r, "kill", id, "TERM")
		deadline := time.Now().Add(10 * time.Second)
		for stateOf(t, r, id).Status != "stopped" {
			if time.Now().After(deadline) {
				t.Fatalf("TERM right after start: still %s after 10s (the trap missed it)", stateOf(t, r, id).Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := os.Stat(filepath.Join(b, "rootfs", "TERM")); err != nil {
			t.Fatalf("the trap did not run: %v", err)
		}
		mustRunv(t, r, "delete", id)
	}
	assertEmptyRoot(t, r)
}

// A namespace path of the wrong type fails create, as runc's setns does; nothing is left.
func TestConformanceNamespacePathType(t *testing.T) {
	t.Parallel()
	r := newRoot(t)
	b := newBundleWith(t, func(s *specs.Spec) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace, Path: "/proc/self/ns/ipc"})
	}, "true")
	res := runvIn(t, r, nil, "create", "--bundle", b, newID(t))
	if res.code == 0 || !strings.Contains(res.stderr, "not cgroup") {
		t.Fatalf("create with an ipc namespace path for the cgroup namespace: %s", res)
	}
	assertEmptyRoot(t, r)
}
