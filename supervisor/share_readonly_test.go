package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A read-only volume is read-only in the share, where QEMU serves it: "ro" the bind alone
// (its submounts stay writable, as with runc), "rro" all of it. The guest's mount keeps
// "ro" only where that cannot cover a writable submount.
func TestShareReadOnlyVolumes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind-mounts volumes into a share: needs root")
	}
	for _, tc := range []struct {
		name     string
		options  []string
		submount bool
		// topWritable, subWritable: on the host; guestRO: the guest's mount is read-only.
		topWritable, subWritable, guestRO bool
	}{
		{name: "rw", options: []string{"rbind"}, submount: true, topWritable: true, subWritable: true},
		{name: "ro with a submount", options: []string{"rbind", "ro"}, submount: true, subWritable: true},
		{name: "ro without submounts", options: []string{"rbind", "ro"}, guestRO: true},
		{name: "ro rslave without submounts yet", options: []string{"rbind", "ro", "rslave"}},
		{name: "rro with a submount", options: []string{"rbind", "rro"}, submount: true, guestRO: true},
		{name: "ro then rw", options: []string{"ro", "rw"}, submount: true, topWritable: true, subWritable: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			if err := os.Mkdir(filepath.Join(src, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.submount {
				if err := unix.Mount("tmpfs", filepath.Join(src, "sub"), "tmpfs", 0, "size=1m"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { unix.Unmount(filepath.Join(src, "sub"), unix.MNT_DETACH) })
			}
			bundle := t.TempDir()
			rootfs := filepath.Join(bundle, "rootfs")
			os.Mkdir(rootfs, 0o755)
			share := t.TempDir()
			spec := &specs.Spec{Root: &specs.Root{Path: rootfs}, Mounts: []specs.Mount{
				{Destination: "/mnt", Type: "bind", Source: src, Options: tc.options},
			}}
			guest, err := shareContainer(share, "c1", bundle, spec)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := unshareContainer(share, "c1"); err != nil {
					t.Errorf("unshare: %v", err)
				}
			})
			shared := filepath.Join(share, "c1", "volumes", "0", filepath.Base(src))
			for _, w := range []struct {
				dir  string
				want bool
			}{{shared, tc.topWritable}, {filepath.Join(shared, "sub"), tc.subWritable}} {
				err := os.WriteFile(filepath.Join(w.dir, "f"), nil, 0o644)
				if w.want && err != nil {
					t.Errorf("write in %s: %v, want it writable", w.dir, err)
				}
				if !w.want && !errors.Is(err, unix.EROFS) {
					t.Errorf("write in %s: %v, want EROFS", w.dir, err)
				}
			}
			if got := readOnlyOf(guest.Mounts[0].Options) != writable; got != tc.guestRO {
				t.Errorf("guest options %v: ro %v, want %v", guest.Mounts[0].Options, got, tc.guestRO)
			}
			if !slices.Contains(spec.Mounts[0].Options, "ro") && slices.Contains(tc.options, "ro") {
				t.Errorf("the caller's spec lost its ro: %v", spec.Mounts[0].Options)
			}
		})
	}
}
