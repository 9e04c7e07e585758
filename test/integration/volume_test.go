//go:build integration

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A volume with host-to-container propagation (rslave: Kubernetes' HostToContainer) shows
// what the host mounts under its source after the container started, as with runc; a
// private volume does not.
func TestVolumePropagationFromHost(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	// The sources are shared mounts, as under /var/lib/kubelet: propagation starts there.
	sources := map[string]string{}
	for _, name := range []string{"rslave", "private"} {
		sources[name] = sharedSource(t)
	}
	id := runWithVolumes(t, stateRoot,
		specs.Mount{Destination: "/mnt/rslave", Type: "bind", Source: sources["rslave"], Options: []string{"rbind", "rslave"}},
		specs.Mount{Destination: "/mnt/private", Type: "bind", Source: sources["private"], Options: []string{"rbind", "rprivate"}})
	for _, src := range sources {
		mountLater(t, src)
	}
	if r := mustRunv(t, stateRoot, "exec", id, "cat", "/mnt/rslave/sub/file"); strings.TrimSpace(r.stdout) != "mounted-later" {
		t.Errorf("rslave volume: the host's later mount is not visible: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "exec", id, "cat", "/mnt/private/sub/file"); r.code == 0 {
		t.Errorf("private volume shows a mount made on the host after start: %s", r)
	}
}

// A read-only volume ("ro", what CRI sends for a read-only volume by default) is read-only
// at its top and leaves its submounts writable, as runc does; "rro" makes the submounts
// read-only too. The host enforces it in the pod's share: the write fails with EROFS from
// QEMU's 9p server.
func TestReadOnlyVolumeSubmounts(t *testing.T) {
	t.Parallel()
	stateRoot := newRoot(t)
	sources := map[string]string{}
	for _, name := range []string{"ro", "rro"} {
		src := filepath.Join(t.TempDir(), name)
		os.MkdirAll(filepath.Join(src, "tmpfs"), 0o755)
		mountTmpfs(t, filepath.Join(src, "tmpfs"))
		sources[name] = src
	}
	id := runWithVolumes(t, stateRoot,
		specs.Mount{Destination: "/mnt/ro", Type: "bind", Source: sources["ro"], Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/mnt/rro", Type: "bind", Source: sources["rro"], Options: []string{"rbind", "rro"}})
	for _, tc := range []struct {
		path     string
		writable bool
	}{
		{"/mnt/ro/f", false}, {"/mnt/ro/tmpfs/f", true},
		{"/mnt/rro/f", false}, {"/mnt/rro/tmpfs/f", false},
	} {
		r := runvIn(t, stateRoot, nil, "exec", id, "touch", tc.path)
		switch {
		case tc.writable && r.code != 0:
			t.Errorf("touch %s: %s, want it written", tc.path, r)
		case !tc.writable && !strings.Contains(r.stderr, "Read-only file system"):
			t.Errorf("touch %s: %s, want Read-only file system", tc.path, r)
		}
	}
	// What the guest shows: /mnt/ro is one 9p mount whose read-only top the host enforces
	// (listed rw), /mnt/rro is read-only in the guest as well.
	mounts := mustRunv(t, stateRoot, "exec", id, "cat", "/proc/mounts").stdout
	t.Logf("/proc/mounts in the container:\n%s", mounts)
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == "/mnt/rro" && !strings.HasPrefix(f[3], "ro,") {
			t.Errorf("/mnt/rro is not read-only in the guest: %s", l)
		}
	}
	if b, err := os.ReadFile(filepath.Join(sources["ro"], "tmpfs", "f")); err != nil {
		t.Errorf("the file written in the volume's submount is not on the host: %v %q", err, b)
	}
}

// sharedSource is a volume source that is a shared mount (as under /var/lib/kubelet), with
// an empty directory "sub".
func sharedSource(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "vol")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, src, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(src, unix.MNT_DETACH) })
	if err := unix.Mount("", src, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	return src
}

// mountLater mounts a tmpfs on src/sub holding "file" ("mounted-later"): what the host
// mounts under a volume's source once the container runs.
func mountLater(t *testing.T, src string) {
	t.Helper()
	sub := filepath.Join(src, "sub")
	mountTmpfs(t, sub)
	if err := os.WriteFile(filepath.Join(sub, "file"), []byte("mounted-later\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mountTmpfs mounts a small tmpfs on dir until the test ends.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// runWithVolumes runs `sleep 1000` detached with the volumes; the container is deleted
// (and the state root checked empty) when the test ends, before the volumes' own cleanups.
func runWithVolumes(t *testing.T, stateRoot string, volumes ...specs.Mount) string {
	t.Helper()
	b := newBundleWith(t, func(s *specs.Spec) { s.Mounts = append(s.Mounts, volumes...) }, "sleep", "1000")
	id := runDetached(t, stateRoot, b)
	t.Cleanup(func() { deleteAndCheck(t, stateRoot, id) })
	return id
}

// A container can write a file through a shared writable mapping (SQLite's WAL index, LMDB),
// in its rootfs as in a volume, as on runc's host filesystems, and the host has the data
// once the process exited, even without msync: the pod share's 9p cache=mmap writes a
// mapping back when it goes (cache=none refused such mappings with EINVAL).
func TestSharedWritableMapping(t *testing.T) {
	t.Parallel()
	prog := filepath.Join(t.TempDir(), "mmapshared")
	if out, err := exec.Command("cc", "-static", "-O2", "-o", prog, "testdata/mmapshared.c").CombinedOutput(); err != nil {
		t.Fatalf("build the test program (cc, as make build needs it for runv-exec): %v\n%s", err, out)
	}
	vol := t.TempDir()
	b := newBundleWith(t, func(s *specs.Spec) {
		s.Root.Readonly = false
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/mnt/vol", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
	}, "sh", "-c", "/mmapshared /in-rootfs rootfs-data && /mmapshared /mnt/vol/in-volume volume-data")
	data, err := os.ReadFile(prog)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "rootfs", "mmapshared"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if r := runvIn(t, newRoot(t), nil, "run", "--bundle", b, newID(t)); r.code != 0 {
		t.Fatalf("run: %s", r)
	}
	for path, want := range map[string]string{
		filepath.Join(b, "rootfs", "in-rootfs"): "rootfs-data",
		filepath.Join(vol, "in-volume"):         "volume-data",
	} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("the host has no %s: %v", path, err)
			continue
		}
		if !strings.HasPrefix(string(got), want) {
			t.Errorf("%s on the host begins %q, want %q", path, got[:min(len(got), 32)], want)
		}
	}
}
