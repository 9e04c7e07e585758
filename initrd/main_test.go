package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// staticELF finds a static executable to stand in for the agent.
func staticELF(t *testing.T) string {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if b, err := os.ReadFile(p); err == nil && isStaticELF(b) {
			return p
		}
	}
	t.Skip("no static busybox to stand in for the agent")
	return ""
}

func TestBuild(t *testing.T) {
	agent := staticELF(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.cpio"), filepath.Join(dir, "b.cpio")
	if err := build(agent, agent, a); err != nil {
		t.Fatal(err)
	}
	if err := build(agent, agent, b); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatal("two builds of the same agent differ: the archive is not reproducible")
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(ab)))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	if recs[0].Name != "." || recs[0].Mode != cpio.S_IFDIR|0o755 {
		t.Errorf("first record %q mode %o: the guest's / must be a 0755 directory", recs[0].Name, recs[0].Mode)
	}
	if c, ok := byName["dev/console"]; !ok || c.Mode&cpio.S_IFMT != cpio.S_IFCHR || c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console: %+v", c.Info)
	}
	want, _ := os.ReadFile(agent)
	for _, name := range []string{"init", "libexec/runv/runv-exec"} {
		f, ok := byName[name]
		if !ok || f.Mode != cpio.S_IFREG|0o755 {
			t.Fatalf("%s: %+v", name, f.Info)
		}
		got := make([]byte, f.FileSize)
		if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs from the binary given (%v)", name, err)
		}
	}
	for _, r := range recs {
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s not normalised: %+v", r.Name, r.Info)
		}
	}
}

func TestBuildRejectsDynamicBinary(t *testing.T) {
	for _, p := range []string{"/bin/true", "/usr/bin/true"} {
		if b, err := os.ReadFile(p); err == nil && !isStaticELF(b) {
			if err := build(p, "", filepath.Join(t.TempDir(), "x.cpio")); err == nil {
				t.Fatalf("%s (dynamic) accepted as /init", p)
			}
			if agent := staticELF(t); build(agent, p, filepath.Join(t.TempDir(), "y.cpio")) == nil {
				t.Fatalf("%s (dynamic) accepted as the exec helper", p)
			}
			return
		}
	}
	t.Skip("no dynamic /bin/true")
}
