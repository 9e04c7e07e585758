package convert

import (
	"io/fs"
	"os"
	"reflect"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestAdjustSpecBindDataOptions(t *testing.T) {
	in := baseSpec()
	in.Mounts = append(in.Mounts,
		specs.Mount{Destination: "/mnt/etc", Source: "/run/runv/share/c/volumes/0/etc",
			Options: []string{"nosuid", "strictatime", "mode=755", "size=1k", "bind", "shared", "defaults"}},
		specs.Mount{Destination: "/tmp/t", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755", "size=1k"}},
	)
	out, err := AdjustSpec(in, guest("c"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := out.Mounts[mountIndex(out.Mounts, "/mnt/etc")].Options, []string{"nosuid", "strictatime", "bind", "shared"}; !reflect.DeepEqual(got, want) {
		t.Errorf("bind options %v, want %v", got, want)
	}
	if got := out.Mounts[mountIndex(out.Mounts, "/tmp/t")].Options; !reflect.DeepEqual(got, []string{"nosuid", "mode=755", "size=1k"}) {
		t.Errorf("tmpfs options changed: %v", got)
	}
}

func TestAdjustSpecFifoDevice(t *testing.T) {
	in := baseSpec()
	in.Linux.Devices = []specs.LinuxDevice{
		{Path: "/dev/c", Type: "c", Major: 10, Minor: 666},
		{Path: "/dev/p", Type: "p", Major: 8, Minor: 666},
	}
	out, err := AdjustSpec(in, guest("c"))
	if err != nil {
		t.Fatal(err)
	}
	if d := out.Linux.Devices[0]; d.Major != 10 || d.Minor != 666 {
		t.Errorf("char device %+v", d)
	}
	if d := out.Linux.Devices[1]; d.Major != 0 || d.Minor != 0 {
		t.Errorf("fifo %+v, want 0:0", d)
	}
}

func TestAdjustSpecUserNamespaceSysfs(t *testing.T) {
	in := baseSpec()
	out, err := AdjustSpec(in, guest("c"))
	if err != nil {
		t.Fatal(err)
	}
	if m := out.Mounts[mountIndex(out.Mounts, "/sys")]; m.Type != "sysfs" {
		t.Errorf("without a user namespace /sys is %+v", m)
	}
	in.Linux.Namespaces = append(in.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	in.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 1000}}
	in.Linux.GIDMappings = in.Linux.UIDMappings
	out, err = AdjustSpec(in, guest("c"))
	if err != nil {
		t.Fatal(err)
	}
	want := specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
	if m := out.Mounts[mountIndex(out.Mounts, "/sys")]; !reflect.DeepEqual(m, want) {
		t.Errorf("/sys in a user namespace %+v, want %+v", m, want)
	}
}

// fakeFS is an lstat over a map of path → mode.
type fakeFS map[string]fs.FileMode

type fakeInfo struct{ mode fs.FileMode }

func (f fakeInfo) Name() string       { return "" }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

func (f fakeFS) lstat(p string) (fs.FileInfo, error) {
	m, ok := f[p]
	if !ok {
		return nil, os.ErrNotExist
	}
	return fakeInfo{m}, nil
}

func TestReadonlyDeviceBinds(t *testing.T) {
	root := "/run/runv/share/c/rootfs"
	files := fakeFS{
		root + "/blk":       fs.ModeDevice,
		root + "/chr":       fs.ModeDevice | fs.ModeCharDevice,
		root + "/fifo":      fs.ModeNamedPipe,
		root + "/file":      0,
		root + "/d":         fs.ModeDir,
		root + "/d/chr":     fs.ModeDevice | fs.ModeCharDevice,
		root + "/link":      fs.ModeSymlink,
		root + "/link/chr":  fs.ModeDevice | fs.ModeCharDevice,
		root + "/dev":       fs.ModeDir,
		root + "/dev/null2": fs.ModeDevice | fs.ModeCharDevice,
	}
	spec := baseSpec()
	spec.Linux.ReadonlyPaths = []string{"/blk", "/chr", "/fifo", "/file", "/d/chr", "/link/chr", "/dev/null2", "/missing", "rel", "/proc/sys"}
	ReadonlyDeviceBinds(spec, root, files.lstat)

	want := []string{"/file", "/link/chr", "/dev/null2", "/missing", "rel", "/proc/sys"}
	if !reflect.DeepEqual(spec.Linux.ReadonlyPaths, want) {
		t.Errorf("readonly paths left %v, want %v", spec.Linux.ReadonlyPaths, want)
	}
	for _, p := range []string{"/blk", "/chr", "/fifo", "/d/chr"} {
		i := mountIndex(spec.Mounts, p)
		if i < 0 {
			t.Errorf("no bind for %s", p)
			continue
		}
		m := spec.Mounts[i]
		if m.Type != "bind" || m.Source != root+p || !reflect.DeepEqual(m.Options, []string{"bind", "ro"}) {
			t.Errorf("%s: %+v", p, m)
		}
	}
}
