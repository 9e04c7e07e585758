package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/specconv"

	"github.com/runv-project/runv/api/convert"
)

// Every field of cgroups.Resources but the device rules takes the cgroup to libcontainer's
// manager: a field added by a libcontainer update included.
func TestDevicesOnly(t *testing.T) {
	rules := []*devices.Rule{{Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rwm", Allow: true}}
	if !devicesOnly(&cgroups.Resources{}) || !devicesOnly(&cgroups.Resources{Devices: rules, SkipDevices: true}) {
		t.Fatal("resources without limits are not devices only")
	}
	typ := reflect.TypeOf(cgroups.Resources{})
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "Devices" || f.Name == "SkipDevices" {
			continue
		}
		r := cgroups.Resources{Devices: rules}
		v := reflect.ValueOf(&r).Elem().Field(i)
		switch v.Kind() {
		case reflect.Pointer:
			v.Set(reflect.New(f.Type.Elem()))
		case reflect.Slice:
			v.Set(reflect.MakeSlice(f.Type, 1, 1))
		case reflect.Map:
			v.Set(reflect.MakeMap(f.Type))
			v.SetMapIndex(reflect.New(f.Type.Key()).Elem(), reflect.New(f.Type.Elem()).Elem())
		case reflect.Bool:
			v.SetBool(true)
		case reflect.String:
			v.SetString("x")
		case reflect.Int, reflect.Int16, reflect.Int32, reflect.Int64:
			v.SetInt(1)
		case reflect.Uint, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			v.SetUint(1)
		default:
			t.Fatalf("field %s of kind %s: teach the test to set it", f.Name, v.Kind())
		}
		if devicesOnly(&r) {
			t.Errorf("resources with %s set count as devices only", f.Name)
		}
	}
}

func TestOwnCgroupDir(t *testing.T) {
	limit := int64(10)
	tests := []struct {
		name string
		cfg  cgroups.Cgroup
		dir  string // "" when libcontainer's manager makes it
	}{
		{"runv's path", cgroups.Cgroup{Path: "/runv/c1", Resources: &cgroups.Resources{}}, "/sys/fs/cgroup/runv/c1"},
		{"no resources", cgroups.Cgroup{Path: "/runv/c1"}, "/sys/fs/cgroup/runv/c1"},
		{"cleaned", cgroups.Cgroup{Path: "/runv/../x//c1/"}, "/sys/fs/cgroup/x/c1"},
		{"relative", cgroups.Cgroup{Path: "runv/c1"}, ""},
		{"the root", cgroups.Cgroup{Path: "/.."}, ""},
		{"parent and name", cgroups.Cgroup{Parent: "runv", Name: "c1"}, ""},
		{"systemd", cgroups.Cgroup{Path: "/runv/c1", Systemd: true}, ""},
		{"a pids limit", cgroups.Cgroup{Path: "/runv/c1", Resources: &cgroups.Resources{PidsLimit: &limit}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, ok := ownCgroupDir(&tt.cfg)
			if dir != tt.dir || ok != (tt.dir != "") {
				t.Errorf("ownCgroupDir = %q, %v; want %q", dir, ok, tt.dir)
			}
		})
	}
}

// createCgroupDir on plain files standing for cgroupfs: the controllers enabled in each
// parent's subtree, a "domain invalid" parent made threaded, whether the cgroup was made,
// errors.
func TestCreateCgroupDir(t *testing.T) {
	root := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// The interface files a cgroupfs directory has (the code writes them without creating
	// or truncating: cgroupfs replaces a file's value on each write).
	write("cgroup.controllers", "cpuset cpu memory pids\n")
	write("cgroup.subtree_control", "")
	write("threads/cgroup.subtree_control", "")
	write("threads/cgroup.type", "domain invalid\n")
	if made, err := createCgroupDir(root, root+"/threads/c1"); err != nil || !made {
		t.Fatalf("createCgroupDir of a new cgroup: made %v, %v", made, err)
	}
	// One that exists (a device filter may be attached to it): not made.
	if made, err := createCgroupDir(root, root+"/threads/c1"); err != nil || made {
		t.Errorf("createCgroupDir of an existing cgroup: made %v, %v", made, err)
	}
	for _, f := range []string{"cgroup.subtree_control", "threads/cgroup.subtree_control"} {
		if got := read(f); got != "+cpuset +cpu +memory +pids" {
			t.Errorf("%s = %q", f, got)
		}
	}
	// A plain file keeps the old value's tail after the shorter one written over it.
	if got := read("threads/cgroup.type"); !strings.HasPrefix(got, "threaded") || strings.HasPrefix(got, "domain") {
		t.Errorf("the domain invalid parent's type = %q, want threaded written over it", got)
	}
	if _, err := os.Stat(filepath.Join(root, "threads/c1/cgroup.subtree_control")); !os.IsNotExist(err) {
		t.Errorf("the new cgroup's own subtree_control was written (%v)", err)
	}

	// A name the kernel refuses (a parent made before it is removed on cgroupfs; here, a
	// plain directory holding the subtree_control written into it, it cannot be).
	if _, err := createCgroupDir(root, root+"/made/"+strings.Repeat("n", 300)); err == nil {
		t.Error("a cgroup with a 300-byte name was made")
	}
	if _, err := createCgroupDir("/nonexistent", root+"/c4"); err == nil {
		t.Error("a cgroup outside the root was made")
	}
}

// The spare cgroup: made once until taken, taken once, each a new directory; a container
// with a cgroup namespace of its own takes it instead of making its cgroup, and its
// configuration then names it (libcontainer's manager, made later for a limit, must agree).
func TestSpareCgroup(t *testing.T) {
	root := t.TempDir()
	for name, content := range map[string]string{"cgroup.controllers": "memory pids\n", "cgroup.subtree_control": "", "runv/cgroup.subtree_control": ""} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &spareCgroup{root: root}
	if _, _, ok := s.take(); ok {
		t.Fatal("a spare before any was made")
	}
	if err := s.make(); err != nil {
		t.Fatal(err)
	}
	if err := s.make(); err != nil {
		t.Fatal(err)
	}
	dir, cgPath, ok := s.take()
	if !ok || dir != root+"/runv/@spare1" || cgPath != "/runv/@spare1" {
		t.Fatalf("take() = %q, %q, %v; want the first spare, made once", dir, cgPath, ok)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("the spare's directory: %v", err)
	}
	if _, _, ok := s.take(); ok {
		t.Fatal("the spare was handed out twice")
	}
	if err := s.make(); err != nil {
		t.Fatal(err)
	}

	saved := spareCgroups
	spareCgroups = s
	defer func() { spareCgroups = saved }()
	cfg := &cgroups.Cgroup{Path: "/runv/c1", Resources: &cgroups.Resources{}}
	c, err := newContainerCgroup(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.create(); err != nil {
		t.Fatal(err)
	}
	if c.dir != root+"/runv/@spare2" || cfg.Path != "/runv/@spare2" {
		t.Errorf("the container's cgroup is %s (configuration: %s), want the second spare", c.dir, cfg.Path)
	}
	if c, _ := newContainerCgroup(&cgroups.Cgroup{Path: "/runv/c2"}, false); c.mayTakeSpare {
		t.Error("a container in a cgroup namespace not its own may take the spare, whose name it would see")
	}
}

// The cgroup of a container made from the host's conversion is the one newContainerCgroup
// makes of the same configuration: a directory of the agent's own, no manager.
func TestConvertedCgroupIsNewContainerCgroups(t *testing.T) {
	cv, why := convert.ForGuest("c", "c/rootfs", specconv.Example(), false)
	if cv == nil {
		t.Fatalf("runc's example spec is not converted on the host: %s", why)
	}
	own, err := newContainerCgroup(convert.CgroupOf(cv), cv.CgroupNS)
	if err != nil {
		t.Fatal(err)
	}
	got := newConvertedCgroup(cv)
	if own.mgr != nil || got.dir != own.dir || got.mayTakeSpare != own.mayTakeSpare || !reflect.DeepEqual(got.cfg, own.cfg) {
		t.Errorf("converted cgroup %+v, newContainerCgroup's %+v", got, own)
	}
}
