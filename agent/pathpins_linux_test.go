package agent

import (
	"os"
	"reflect"
	"sort"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The directories pinned are the process's PATH entries in order, relative and empty
// ones taken in its cwd.
func TestPathDirs(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    specs.Process
		want []string
	}{
		{"PATH in order", specs.Process{Cwd: "/", Env: []string{"A=1", "PATH=/usr/bin:/bin/"}}, []string{"/usr/bin", "/bin"}},
		{"relative and empty entries are the cwd's", specs.Process{Cwd: "/w", Env: []string{"PATH=bin::/sbin"}}, []string{"/w/bin", "/w", "/sbin"}},
		{"no PATH", specs.Process{Cwd: "/"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := pathDirs(&tt.p); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("pathDirs = %q, want %q", got, tt.want)
			}
		})
	}
}

// Each PATH directory is pinned once, a missing one through its deepest ancestor that
// exists, inside the rootfs; the pins go with the container, and none is taken after.
func TestPathPins(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(root+"/usr/bin", 0o755); err != nil {
		t.Fatal(err)
	}
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootfd)
	var pins pathPins
	p := &specs.Process{Cwd: "/", Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/bin:/bin"}}
	for _, dir := range pathDirs(p) {
		pins.pin(rootfd, dir)
	}
	var got []string
	for dir := range pins.paths {
		got = append(got, dir)
	}
	sort.Strings(got)
	if want := []string{"/", "/usr", "/usr/bin"}; !reflect.DeepEqual(got, want) || len(pins.fds) != len(want) {
		t.Fatalf("pinned %q (%d descriptors), want %q", got, len(pins.fds), want)
	}
	fds := append([]int(nil), pins.fds...)
	pins.close()
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			t.Errorf("descriptor %d still open after close", fd)
		}
	}
	pins.pin(rootfd, "/usr/bin")
	if len(pins.fds) != 0 {
		t.Error("a pin was taken after close")
	}
}
