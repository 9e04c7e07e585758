package oci

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
)

func TestLoadBundle(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*specs.Spec)
		raw     string
		wantErr string
	}{
		{name: "default spec", mutate: func(*specs.Spec) {}},
		{name: "client ociVersion 1.0.2-dev", mutate: func(s *specs.Spec) { s.Version = "1.0.2-dev" }},
		{name: "ociVersion 2", mutate: func(s *specs.Spec) { s.Version = "2.0.0" }, wantErr: "ociVersion"},
		{name: "no root", mutate: func(s *specs.Spec) { s.Root = nil }, wantErr: "root.path is missing"},
		{name: "rootfs missing", mutate: func(s *specs.Spec) { s.Root.Path = "nope" }, wantErr: "does not exist"},
		{name: "no process", mutate: func(s *specs.Spec) { s.Process = nil }, wantErr: "process is missing"},
		{name: "no args", mutate: func(s *specs.Spec) { s.Process.Args = nil }, wantErr: "process.args is empty"},
		{name: "relative cwd", mutate: func(s *specs.Spec) { s.Process.Cwd = "tmp" }, wantErr: "process.cwd"},
		{name: "relative mount", mutate: func(s *specs.Spec) { s.Mounts[0].Destination = "proc" }, wantErr: "mounts[0].destination"},
		{name: "not JSON", raw: "{", wantErr: "not a valid OCI runtime config"},
		{name: "namespace path of its type", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace, Path: "/proc/self/ns/cgroup"})
		}},
		{name: "namespace path of another type", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace, Path: "/proc/self/ns/ipc"})
		}, wantErr: "is a namespace of type ipc, not cgroup"},
		{name: "namespace path missing", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces[0].Path = "/nonexistent/ns"
		}, wantErr: "/nonexistent/ns"},
		{name: "namespace path not a namespace", mutate: func(s *specs.Spec) {
			s.Linux.Namespaces[0].Path = "/proc/self/status"
		}, wantErr: "not a namespace file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			os.Mkdir(filepath.Join(dir, "rootfs"), 0o755)
			raw := []byte(tt.raw)
			if tt.mutate != nil {
				s := DefaultSpec()
				tt.mutate(s)
				raw, _ = json.Marshal(s)
			}
			os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644)
			_, _, _, err := LoadBundle(dir)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument mentioning %q", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), filepath.Join(dir, "config.json")) {
				t.Fatalf("error does not name the file: %v", err)
			}
		})
	}
	if _, _, _, err := LoadBundle(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("missing config.json: %v", err)
	}
}

// Paths relative to the bundle are resolved once, here: in the spec and in the encoded
// config the pod daemon gets.
func TestLoadBundleResolvesPaths(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "rootfs"), 0o755)
	s := DefaultSpec()
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/data", Type: "bind", Source: "data", Options: []string{"rbind"}},
		specs.Mount{Destination: "/abs", Source: "/srv", Options: []string{"bind"}})
	raw, _ := json.Marshal(s)
	os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644)
	abs, spec, raw, err := LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	var sent specs.Spec
	if err := json.Unmarshal(raw, &sent); err != nil {
		t.Fatal(err)
	}
	for _, got := range []*specs.Spec{spec, &sent} {
		n := len(got.Mounts)
		if got.Root.Path != filepath.Join(abs, "rootfs") || got.Mounts[n-2].Source != filepath.Join(abs, "data") ||
			got.Mounts[n-1].Source != "/srv" || got.Mounts[0].Source != "proc" {
			t.Errorf("root.path %s, mount sources %q %q %q", got.Root.Path, got.Mounts[0].Source, got.Mounts[n-2].Source, got.Mounts[n-1].Source)
		}
	}
}
