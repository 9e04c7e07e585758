package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The program is looked for where the exec will look: the process's PATH in order, a
// relative PATH entry or program name in its cwd, a name with a slash as it is.
func TestProgramCandidates(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    specs.Process
		want []string
	}{
		{"PATH in order", specs.Process{Args: []string{"true"}, Cwd: "/", Env: []string{"A=1", "PATH=/usr/bin:/bin"}},
			[]string{"/usr/bin/true", "/bin/true"}},
		{"relative and empty PATH entries are the cwd's", specs.Process{Args: []string{"t"}, Cwd: "/w", Env: []string{"PATH=bin::/sbin"}},
			[]string{"/w/bin/t", "/w/t", "/sbin/t"}},
		{"absolute program", specs.Process{Args: []string{"/opt/x"}, Cwd: "/w", Env: []string{"PATH=/bin"}}, []string{"/opt/x"}},
		{"relative program with a slash", specs.Process{Args: []string{"./x"}, Cwd: "/w"}, []string{"/w/x"}},
		{"no PATH", specs.Process{Args: []string{"true"}, Cwd: "/"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := programCandidates(&tt.p); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("programCandidates = %q, want %q", got, tt.want)
			}
		})
	}
}

// Only an executable regular file inside the rootfs is read: a symlink that points out of
// the rootfs is resolved in it, and a FIFO or a file that is not executable is skipped.
func TestPrefetchFileStaysInTheRootfs(t *testing.T) {
	dir := t.TempDir()
	root, outside := filepath.Join(dir, "rootfs"), filepath.Join(dir, "outside")
	for _, d := range []string{root + "/bin", outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path string, mode os.FileMode) {
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(root+"/bin/prog", 0o755)
	write(root+"/bin/data", 0o644)
	write(outside+"/prog", 0o755)
	if err := os.Symlink(outside+"/prog", root+"/bin/escape"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("prog", root+"/bin/link"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(root+"/bin/fifo", 0o755); err != nil {
		t.Fatal(err)
	}
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootfd)
	for path, want := range map[string]bool{
		"/bin/prog": true, "/bin/link": true,
		"/bin/escape": false, "/bin/data": false, "/bin/fifo": false, "/bin/missing": false, "/../outside/prog": false,
	} {
		fd, got := prefetchFile(rootfd, path)
		if got != want {
			t.Errorf("prefetchFile(%s) = %v, want %v", path, got, want)
		}
		if got {
			unix.Close(fd)
		}
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
