// Package poddaemon is the pod daemon (`runv containerd --solo-namespaced`, started by the
// first `runv create` of a pod): Main builds the pod's VM factory and serves the pod's
// supervisor on <pod dir>/namespaced.sock (Serve) until the pod's last container is
// deleted. Clients reach it with podapi.Dial.
package poddaemon

import (
	"context"
	"fmt"
	"os"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/factoryd"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// Where `make install` puts the guest kernel and initrd.
const (
	DefaultKernel = "/var/lib/runv/vmlinux"
	DefaultInitrd = "/var/lib/runv/initrd.img"
)

// Boot is how a pod's VM is made. The pod daemon and the containerd shim
// (containerd-shim-runv-v2) both build their factory from it.
type Boot struct {
	// Base is the VM's kernel, initrd, accelerator, machine and default size.
	Base hypervisor.Config
	// Factory is the --factory setting (factory.ParseSetting).
	Factory string
	// Root is the state root, where the factory daemon serves pooled VMs (factoryd).
	Root string
	// TemplateDir is where the template factory keeps its templates.
	TemplateDir string
}

// CheckFiles fails fast, before anything is created, when the kernel or initrd is missing.
func (b Boot) CheckFiles() error {
	for _, f := range []struct{ what, path, hint string }{
		{"kernel", b.Base.Kernel, "build and install it with 'make kernel install', or pass --kernel / set RUNV_KERNEL"},
		{"initrd", b.Base.Initrd, "build and install it with 'make initrd install', or pass --initrd / set RUNV_INITRD"},
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

// Main is the pod daemon of pod podID in directory dir. It reports readiness, or why it
// could not start, on ready (see Serve), and returns when the pod is gone. first, if not
// nil, is the VM size the pod's first container asks for (oci.VMSize, read by the runv
// that starts the daemon from the same spec): the VM is then requested at once, while the
// daemon starts serving and its client connects, instead of when that container's Create
// arrives.
//
// prefetched, if not nil, is where the runv that starts the daemon writes the VM it asked the
// factory daemon for on the daemon's behalf (PooledFirstVM, factoryd.Prefetch): the pod's
// first GetVM takes it over.
func Main(ctx context.Context, podID, dir string, boot Boot, first *factory.Request, prefetched, ready *os.File) error {
	f, size, err := NewFactory(ctx, boot)
	if err != nil {
		if prefetched != nil {
			prefetched.Close()
		}
		// Said on the ready pipe too: the CLI quotes it instead of "see daemon.log".
		if ready != nil {
			fmt.Fprintf(ready, "error: %v\n", err)
			ready.Close()
		}
		return err
	}
	if prefetched != nil {
		f = factoryd.Prefetched(f, prefetched)
	}
	defer f.Close()
	cfg := supervisor.Config{
		PodID:   podID,
		Dir:     dir,
		Factory: f,
		// The pod's first container sizes the VM (oci.VMSize), never below the defaults.
		VM:           size,
		SizeFromSpec: true,
		// Serve ends the pod after its last container.
		EndsWhenEmpty: true,
	}
	if first != nil {
		cfg.VM, cfg.SizeFromSpec = supervisor.SizedFor(size, *first), false
	}
	err = Serve(ctx, cfg, ready)
	// The pod and its directory are gone. A daemon's end is off its clients' paths (a
	// foreground run that ended the pod did not wait for it): the time to remove what
	// daemons killed in that window left, so that a host running only foreground runs is
	// swept too (this one's, were it killed now, goes at the next daemon's end).
	if serr := SweepRoot(boot.Root); serr != nil {
		logging.G(ctx).Warn("orphaned pod directories left", "pod", podID, "error", serr)
	}
	if err != nil {
		return fmt.Errorf("pod %s: %w", cfg.PodID, err)
	}
	return nil
}

// PooledFirstVM is the request Main's pod daemon makes for the VM of a pod whose first
// container asks for first (oci.VMSize), and whether the policy gives that request to the
// factory daemon's pools: then the runv that starts the daemon can ask for it
// (factoryd.Prefetch) while the daemon starts. A policy that does not parse is the
// daemon's to report: no pool.
func PooledFirstVM(boot Boot, podID, dir string, first factory.Request) (factory.Request, bool) {
	policy, _, base, err := resolvePolicy(boot)
	if err != nil {
		return factory.Request{}, false
	}
	req := supervisor.SizedFor(factory.Request{CPUs: base.CPUs, MemoryMiB: base.MemoryMiB}, first)
	req.ID, req.Dir, req.ShareDir = podID, supervisor.VMDir(dir), supervisor.ShareDir(dir)
	i := factory.EntryFor(policy, base, req.CPUs, req.MemoryMiB)
	return req, i >= 0 && policy[i].Cache > 0
}

// resolvePolicy is boot's factory policy, where it comes from, and the VM configuration
// with the pods' default size (a policy's first entry's, else boot.Base's): what NewFactory
// builds on, and PooledFirstVM must agree with.
func resolvePolicy(boot Boot) ([]factory.Policy, string, hypervisor.Config, error) {
	policy, source, err := factory.ParseSetting(boot.Factory)
	if err != nil {
		return nil, "", hypervisor.Config{}, err
	}
	base := boot.Base
	base.CPUs, base.MemoryMiB = factory.DefaultSize(policy, base.CPUs, base.MemoryMiB)
	return policy, source, base, nil
}

// NewFactory builds the pod's VM factory from the --factory setting or the policy file:
// direct boots, or clones of a template created on first use, or VMs from the factory
// daemon's pools. It also returns the pods' default VM size: a policy's first entry's,
// the size its template has, else boot.Base's.
func NewFactory(ctx context.Context, boot Boot) (factory.Factory, factory.Request, error) {
	policy, source, base, err := resolvePolicy(boot)
	if err != nil {
		return nil, factory.Request{}, fmt.Errorf("factory: %w", err)
	}
	f, err := factory.New(ctx, factory.Options{
		Launcher:    &qemu.Launcher{},
		Base:        base,
		TemplateDir: boot.TemplateDir,
		// A policy entry with "cache" asks the factory daemon of this root for pooled VMs.
		Cache: factoryd.Wrapper(boot.Root),
	}, policy)
	if err != nil {
		return nil, factory.Request{}, fmt.Errorf("factory (%s): %w", source, err)
	}
	logging.G(ctx).Info("vm factory", "kind", f.Name(), "policy", source)
	return f, factory.Request{CPUs: base.CPUs, MemoryMiB: base.MemoryMiB}, nil
}
