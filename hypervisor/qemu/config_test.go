package qemu

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

func TestValidate(t *testing.T) {
	tmp := t.TempDir()
	kernel := filepath.Join(tmp, "vmlinux")
	initrd := filepath.Join(tmp, "initrd")
	for _, f := range []string{kernel, initrd} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	good := func() hypervisor.Config {
		return withDefaults(hypervisor.Config{ID: "p", Dir: tmp, ShareDir: tmp, Kernel: kernel, Initrd: initrd})
	}
	tests := []struct {
		name     string
		mod      func(*hypervisor.Config)
		wantMsg  []string // substrings of the error; none: valid
		notExist bool
	}{
		{name: "valid", mod: func(*hypervisor.Config) {}},
		{name: "q35 with hot-plug room", mod: func(c *hypervisor.Config) { c.Machine, c.MaxCPUs, c.MaxMemoryMiB = hypervisor.MachineQ35, 4, 1024 }},
		{name: "missing kernel", mod: func(c *hypervisor.Config) { c.Kernel = "/nonexistent/vmlinux" },
			wantMsg: []string{"kernel /nonexistent/vmlinux not found", "make kernel install", "--kernel"}, notExist: true},
		{name: "no kernel", mod: func(c *hypervisor.Config) { c.Kernel = "" }, wantMsg: []string{"no kernel configured", "--kernel"}},
		{name: "kernel is a directory", mod: func(c *hypervisor.Config) { c.Kernel = tmp }, wantMsg: []string{"not a regular file"}},
		{name: "missing initrd", mod: func(c *hypervisor.Config) { c.Initrd = "/nonexistent/initrd.img" },
			wantMsg: []string{"initrd /nonexistent/initrd.img not found", "--initrd"}, notExist: true},
		{name: "missing share dir", mod: func(c *hypervisor.Config) { c.ShareDir = "/nonexistent/share" },
			wantMsg: []string{"share directory /nonexistent/share not found", "must exist"}, notExist: true},
		{name: "share dir is a file", mod: func(c *hypervisor.Config) { c.ShareDir = kernel }, wantMsg: []string{"not a directory"}},
		{name: "missing vm dir", mod: func(c *hypervisor.Config) { c.Dir = "/nonexistent/vm" }, wantMsg: []string{"vm directory /nonexistent/vm"}, notExist: true},
		{name: "socket path too long", mod: func(c *hypervisor.Config) {
			long := filepath.Join(tmp, strings.Repeat("d", 100))
			os.Mkdir(long, 0o755)
			c.Dir = long
		}, wantMsg: []string{"too long for unix sockets"}},
		{name: "unknown machine", mod: func(c *hypervisor.Config) { c.Machine = "pc" }, wantMsg: []string{`unknown machine "pc"`}},
		{name: "unknown accel", mod: func(c *hypervisor.Config) { c.Accel = "hvf" }, wantMsg: []string{`unknown accelerator "hvf"`}},
		{name: "hot-plug on microvm", mod: func(c *hypervisor.Config) { c.MaxCPUs = 4 }, wantMsg: []string{"hot-plug need machine q35"}},
		{name: "max below boot", mod: func(c *hypervisor.Config) { c.Machine, c.CPUs, c.MaxCPUs = hypervisor.MachineQ35, 4, 2 }, wantMsg: []string{"max vCPUs 2"}},
		{name: "max memory below boot", mod: func(c *hypervisor.Config) { c.Machine, c.MaxMemoryMiB = hypervisor.MachineQ35, 64 }, wantMsg: []string{"max memory 64 MiB"}},
		{name: "tiny memory", mod: func(c *hypervisor.Config) { c.MemoryMiB = 8 }, wantMsg: []string{"at least 32 MiB"}},
		{name: "missing qemu", mod: func(c *hypervisor.Config) { c.QEMU = "/nonexistent/qemu" }, wantMsg: []string{"qemu /nonexistent/qemu not found", "qemu-system-x86"}},
		{name: "no id", mod: func(c *hypervisor.Config) { c.ID = "" }, wantMsg: []string{"no id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.mod(&c)
			err := validate(&c)
			if len(tt.wantMsg) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %q is not ErrInvalidArgument", err)
			}
			if tt.notExist && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %q is not fs.ErrNotExist", err)
			}
		})
	}
}
