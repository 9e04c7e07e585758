package hypervisor

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultQEMU(t *testing.T) {
	dir := t.TempDir()
	installed := filepath.Join(dir, "qemu-system-x86_64")
	if got := defaultQEMU("", installed); got != PathQEMU {
		t.Errorf("nothing installed: got %q, want the PATH fallback %q", got, PathQEMU)
	}
	if err := os.WriteFile(installed, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := defaultQEMU("", installed); got != PathQEMU {
		t.Errorf("installed but not executable: got %q, want the PATH fallback %q", got, PathQEMU)
	}
	if err := os.Chmod(installed, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := defaultQEMU("", installed); got != installed {
		t.Errorf("installed: got %q, want %q", got, installed)
	}
	if got := defaultQEMU("/opt/other/qemu", installed); got != "/opt/other/qemu" {
		t.Errorf("%s set: got %q, want it", EnvQEMU, got)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := defaultQEMU("", filepath.Join(dir, "adir")); got != PathQEMU {
		t.Errorf("a directory at the installed path: got %q, want the PATH fallback", got)
	}
	// Installed with the running program (another PREFIX) comes before the default place.
	beside := filepath.Join(dir, "beside")
	if err := os.WriteFile(beside, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := defaultQEMU("", beside, installed); got != beside {
		t.Errorf("installed beside the program and in the default place: got %q, want %q", got, beside)
	}
	if got := defaultQEMU("", filepath.Join(dir, "missing"), installed); got != installed {
		t.Errorf("nothing beside the program: got %q, want the default place %q", got, installed)
	}
	if got := defaultQEMU("", "", installed); got != installed {
		t.Errorf("the program's path unknown: got %q, want the default place %q", got, installed)
	}
}

func TestQEMUBesideProgram(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(filepath.Dir(filepath.Dir(exe)), "libexec", "runv", "qemu-system-x86_64")
	if got := qemuBesideProgram(); got != want {
		t.Errorf("qemuBesideProgram() = %q, want %q (PREFIX/bin/runv -> PREFIX/libexec/runv/)", got, want)
	}
}
