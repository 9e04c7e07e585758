// Package podvm turns the host's settings for pod VMs (boot files, accelerator, machine,
// default size, factory policy) into the factory a pod's supervisor takes its VM from. The
// CLI's pod daemon and the containerd shim both build their factory here: one code path.
package podvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/cachesrv"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/logging"
)

// Where `make install` puts the guest kernel and initrd.
const (
	DefaultKernel = "/var/lib/runv/vmlinux"
	DefaultInitrd = "/var/lib/runv/initrd.img"
)

// Settings are the host's choices for pod VMs.
type Settings struct {
	// Root is runv's state root: templates live in Root/@templates, the factory daemon's
	// socket (pooled VMs) in Root too.
	Root           string
	Kernel, Initrd string
	Accel, Machine string
	// CPUs and MemoryMiB are a pod VM's default size. New replaces them with the size of
	// the policy's first entry when it has one (the size its template has).
	CPUs, MemoryMiB int
	// Factory is the --factory setting (factory.ParseSetting): direct, template, a policy
	// file or inline JSON; empty means the policy file if it exists, else direct.
	Factory string
}

// TemplateDir is where the template factory keeps its templates: @templates/ of the state
// root (/run/runv/@templates by default), made a tmpfs if it is not on one. "@" cannot
// start a container id, so no container collides with it.
func (s *Settings) TemplateDir() string { return filepath.Join(s.Root, "@templates") }

// CheckBootFiles fails fast, before anything is created, when the kernel or initrd is missing.
func (s *Settings) CheckBootFiles() error {
	for _, f := range []struct{ what, path, hint string }{
		{"kernel", s.Kernel, "build and install it with 'make kernel install', or pass --kernel / set RUNV_KERNEL"},
		{"initrd", s.Initrd, "build and install it with 'make initrd install', or pass --initrd / set RUNV_INITRD"},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("guest %s %s not found: %s: %w", f.what, f.path, f.hint, errdefs.ErrInvalidArgument)
		}
		if fi.IsDir() {
			return fmt.Errorf("guest %s %s is a directory, not a file: %w", f.what, f.path, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// NewFactory builds the pods' VM factory: direct boots, or clones of a template created on
// first use, with a pool of warmed VMs in front when a policy entry asks for one.
func (s *Settings) NewFactory(ctx context.Context) (factory.Factory, error) {
	policy, source, err := factory.ParseSetting(s.Factory)
	if err != nil {
		return nil, fmt.Errorf("factory: %w", err)
	}
	s.CPUs, s.MemoryMiB = factory.DefaultSize(policy, s.CPUs, s.MemoryMiB)
	// A policy entry with "cache" asks the factory daemon of this root for pooled VMs.
	factory.WrapCache = cachesrv.Wrapper(s.Root)
	f, err := factory.New(ctx, factory.Options{
		Launcher: &qemu.Launcher{},
		Base: hypervisor.Config{
			Kernel: s.Kernel, Initrd: s.Initrd, Accel: s.Accel, Machine: s.Machine,
			CPUs: s.CPUs, MemoryMiB: s.MemoryMiB,
		},
		TemplateDir: s.TemplateDir(),
	}, policy)
	if err != nil {
		return nil, fmt.Errorf("factory (%s): %w", source, err)
	}
	logging.G(ctx).Info("vm factory", "kind", f.Name(), "policy", source)
	return f, nil
}
