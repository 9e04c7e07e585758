//go:build integration

package integration

import (
	"os"
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
		src := filepath.Join(t.TempDir(), name)
		os.MkdirAll(filepath.Join(src, "sub"), 0o755)
		if err := unix.Mount(src, src, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(src, unix.MNT_DETACH) })
		if err := unix.Mount("", src, "", unix.MS_SHARED, ""); err != nil {
			t.Fatal(err)
		}
		sources[name] = src
	}
	b := newBundleWith(t, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/mnt/rslave", Type: "bind", Source: sources["rslave"], Options: []string{"rbind", "rslave"}},
			specs.Mount{Destination: "/mnt/private", Type: "bind", Source: sources["private"], Options: []string{"rbind", "rprivate"}})
	}, "sleep", "1000")
	id := runDetached(t, stateRoot, b)
	defer deleteAndCheck(t, stateRoot, id)
	for _, src := range sources {
		sub := filepath.Join(src, "sub")
		if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
		if err := os.WriteFile(filepath.Join(sub, "file"), []byte("mounted-later\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if r := mustRunv(t, stateRoot, "exec", id, "cat", "/mnt/rslave/sub/file"); strings.TrimSpace(r.stdout) != "mounted-later" {
		t.Errorf("rslave volume: the host's later mount is not visible: %s", r)
	}
	if r := runvIn(t, stateRoot, nil, "exec", id, "cat", "/mnt/private/sub/file"); r.code == 0 {
		t.Errorf("private volume shows a mount made on the host after start: %s", r)
	}
}
