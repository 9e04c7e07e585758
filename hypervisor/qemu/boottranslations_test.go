package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/runv-project/runv/hypervisor"
)

// Boots of the same files and command line share a key whatever their own names and
// directories; a change of a file or of the command line makes another.
func TestBootKey(t *testing.T) {
	files := t.TempDir()
	cfg := baseConfig()
	cfg.QEMU, cfg.Kernel, cfg.Initrd = filepath.Join(files, "qemu"), filepath.Join(files, "vmlinux"), filepath.Join(files, "initrd")
	for _, f := range []string{cfg.QEMU, cfg.Kernel, cfg.Initrd} {
		if err := os.WriteFile(f, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	key := func(c hypervisor.Config) string {
		t.Helper()
		k, err := (&launch{cfg: c, accel: hypervisor.AccelTCG}).bootKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := key(cfg)
	other := cfg
	other.ID, other.Dir, other.ShareDir = "pod2", "/run/runv/pod2/vm", "/run/runv/pod2/share"
	if k := key(other); k != base {
		t.Errorf("another pod's boot has key %s, want %s", k, base)
	}
	for name, mod := range map[string]func(*hypervisor.Config){
		"memory":  func(c *hypervisor.Config) { c.MemoryMiB = 256 },
		"machine": func(c *hypervisor.Config) { c.Machine = hypervisor.MachineQ35 },
		"kernel": func(c *hypervisor.Config) {
			later := time.Now().Add(time.Hour)
			os.Chtimes(c.Kernel, later, later)
		},
	} {
		c := cfg
		mod(&c)
		if k := key(c); k == base {
			t.Errorf("%s changed, the key did not", name)
		}
	}
}

// The newest files stay; what is not a boot's translations is left alone.
func TestPruneBootTranslations(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	for i, name := range []string{"a.tb", "b.tb", "c.tb", "d.none"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		at := now.Add(time.Duration(i) * time.Minute)
		os.Chtimes(p, at, at)
	}
	pruneBootTranslations(dir, 2)
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{"b.tb", "c.tb", "d.none"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
}
