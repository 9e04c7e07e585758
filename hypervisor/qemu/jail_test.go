package qemu

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseLoaderTrace(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []string
		wantErr bool
	}{
		{name: "debian qemu", out: "\tlinux-vdso.so.1 (0x00007ffd)\n" +
			"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f1d)\n" +
			"\t/lib64/ld-linux-x86-64.so.2 (0x00007f1e)\n",
			want: []string{"/lib/x86_64-linux-gnu/libz.so.1", "/lib64/ld-linux-x86-64.so.2"}},
		{name: "missing library", out: "\tlibfoo.so.1 => not found\n\tlibz.so.1 => /lib/libz.so.1 (0x1)\n", wantErr: true},
		{name: "nothing listed", out: "\tstatically linked\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLoaderTrace([]byte(tt.out))
			if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseLoaderTrace = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// The jail mounts each file where its path leads, with every symlink on the way
// reproduced as written, so that the loader and QEMU find it by the path they were given.
func TestJailReproducesSymlinks(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) string {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lib := mk("usr/lib/libz.so.1.2.13")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"lib":                 "usr/lib",                            // relative, merged /usr
		"usr/lib/libz.so.1":   "libz.so.1.2.13",                     // relative, same directory
		"lib64/ld.so":         filepath.Join(root, "lib/libz.so.1"), // absolute, through another link
		"loop/a":              "b",
		"loop/b":              "a",
		"usr/share/qemu/bios": "../../lib/../lib/libz.so.1.2.13",
	} {
		if err := os.Symlink(target, mk(link)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		path, want string
		links      []string
		wantErr    bool
	}{
		{path: "lib/libz.so.1", want: "usr/lib/libz.so.1.2.13", links: []string{"lib", "usr/lib/libz.so.1"}},
		{path: "lib64/ld.so", want: "usr/lib/libz.so.1.2.13", links: []string{"lib64/ld.so", "lib", "usr/lib/libz.so.1"}},
		{path: "usr/share/qemu/bios", want: "usr/lib/libz.so.1.2.13", links: []string{"usr/share/qemu/bios"}},
		{path: "loop/a", wantErr: true},
		{path: "nonexistent", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			j := &jail{}
			got, err := j.reproduce(filepath.Join(root, tt.path))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("reproduce %s = %s, want an error", tt.path, got)
				}
				return
			}
			if err != nil || got != filepath.Join(root, tt.want) {
				t.Fatalf("reproduce %s = %s, %v; want %s", tt.path, got, err, tt.want)
			}
			var links []string
			for _, s := range j.symlinks {
				links = append(links, s.path)
			}
			var want []string
			for _, l := range tt.links {
				want = append(want, filepath.Join(root, l))
			}
			if !reflect.DeepEqual(links, want) {
				t.Errorf("symlinks %q, want %q", links, want)
			}
		})
	}
}

// A cached discovery is used only for the same QEMU binary and while everything it lists
// exists: a library upgraded under another name is discovered again.
func TestHostFilesCache(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "files.json")
	lib := filepath.Join(dir, "libz.so.1")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	key := hostFilesKey{QEMU: "/usr/bin/qemu-system-x86_64", Mtime: 1, Size: 2}
	want := hostFiles{files: []string{lib}, dirs: []string{dir}}
	writeHostFiles(cache, key, want)
	if got, ok := readHostFiles(cache, key); !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("read back %+v, %v; want %+v", got, ok, want)
	}
	other := key
	other.Mtime++
	if _, ok := readHostFiles(cache, other); ok {
		t.Error("a discovery for another binary was used")
	}
	os.Remove(lib)
	if _, ok := readHostFiles(cache, key); ok {
		t.Error("a discovery listing a file that is gone was used")
	}
}
