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

// The libraries in a loader directory are bound as that directory, once, with the symlinks
// on the way to it; a file elsewhere, or reached through a symlink leading out of its
// directory, keeps its own bind (none if it lands in a bound directory), and the symlinks
// inside a bound directory are the host's own, not recreated.
func TestJailBindsLibraryDirectories(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/lib", "usr/bin", "usr/lib64"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"usr/lib/libz.so.1.2.13", "usr/lib/libm.so.6", "usr/bin/qemu"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"lib": "usr/lib", "usr/lib/libz.so.1": "libz.so.1.2.13", "bin": "usr/bin",
		"usr/lib64/ld.so": filepath.Join(root, "lib/libm.so.6"), "usr/lib/libc.so.6": "../bin/qemu"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	in := func(p string) string { return filepath.Join(root, p) }
	j := &jail{}
	rest, err := j.bindLibraryDirs([]string{in("bin/qemu"), in("lib/libz.so.1"), in("usr/lib64/ld.so"),
		in("lib/libm.so.6"), in("lib/libc.so.6")}, []string{in("lib"), in("usr/lib64")})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{in("usr/bin/qemu")}; !reflect.DeepEqual(rest, want) {
		t.Errorf("files bound on their own %q, want %q", rest, want)
	}
	if want := []jailMount{{src: in("usr/lib"), dst: in("usr/lib"), dir: true, exec: true}}; !reflect.DeepEqual(j.mounts, want) {
		t.Errorf("mounts %+v, want %+v", j.mounts, want)
	}
	var links []string
	for _, s := range j.symlinks {
		links = append(links, s.path)
	}
	// ld.so's link leads out of its directory, to a library in a bound one: kept, and
	// libc's out of its bound directory: kept, though it is in that directory.
	if want := []string{in("bin"), in("lib"), in("usr/lib64/ld.so")}; !reflect.DeepEqual(links, want) {
		t.Errorf("symlinks %q, want %q", links, want)
	}
}
