package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/runv-project/runv/test/bundle"
)

func TestQualify(t *testing.T) {
	for in, want := range map[string]string{
		"busybox": "docker.io/library/busybox", "runv-test/busybox": "docker.io/runv-test/busybox",
		"localhost/x": "localhost/x", "reg.example:5000/a/b": "reg.example:5000/a/b", "quay.io/x/y": "quay.io/x/y",
	} {
		if got := qualify(in); got != want {
			t.Errorf("qualify(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBusyboxReproducibleAndComplete(t *testing.T) {
	if _, err := os.Stat(bundle.Busybox); err != nil {
		t.Skipf("needs %s (apt-get install busybox-static)", bundle.Busybox)
	}
	dir := t.TempDir()
	a, err := Busybox(filepath.Join(dir, "a.tar"), "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Busybox(filepath.Join(dir, "b.tar"), "x/y:v1")
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != DefaultName || a.Qualified != "docker.io/"+DefaultName || b.Name != "x/y:v1" || b.Qualified != "docker.io/x/y:v1" {
		t.Errorf("names: %+v %+v", a, b)
	}
	if a.Config != b.Config {
		t.Errorf("the same busybox gave configs %s and %s", a.Config, b.Config)
	}
	raw, _ := os.ReadFile(a.Path)
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
	for _, f := range []string{"oci-layout", "index.json", "manifest.json", "repositories"} {
		if _, ok := files[f]; !ok {
			t.Errorf("%s missing", f)
		}
	}
	var dm []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &dm); err != nil || len(dm) != 1 || len(dm[0].Layers) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	layer, ok := files[dm[0].Layers[0]]
	if !ok {
		t.Fatalf("layer %s missing", dm[0].Layers[0])
	}
	seen := map[string]bool{}
	lr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = true
		if h.Name == "tmp/" && h.Mode&0o1777 != 0o1777 {
			t.Errorf("tmp/ mode %o, want 1777", h.Mode)
		}
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	for _, f := range []string{"bin/busybox", "bin/sh", "etc/passwd", "tmp/"} {
		if !seen[f] {
			t.Errorf("layer lacks %s", f)
		}
	}
}
