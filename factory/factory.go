// Package factory hands out VMs for pods. Every kind implements Factory:
//
//   - Direct cold-boots a VM per request through a hypervisor.Launcher.
//   - Template clones VMs from a snapshot of a booted template VM (template.go), and boots
//     directly what it cannot clone;
//   - Cache keeps a pool of VMs from another Factory ready (cache.go); across processes,
//     the factory daemon's pools (factory/factoryd) through Options.Cache.
//
// New builds the factory a policy (policy.go, runV's factory.json format) describes.
//
// A VM from a clone or a pool is handed out already booted, its agent up and parked; how a
// VM came to be is told by its Restored method, so the caller knows whether to wait for the agent's
// READY (cold boot) or to resynchronise a restored guest (clock, RNG, identity) instead.
package factory

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// Factory gives out VMs. A VM returned by GetVM belongs to the caller, who shuts it down;
// Close releases what the factory itself holds (templates, pooled VMs), not given-out VMs.
type Factory interface {
	GetVM(ctx context.Context, req Request) (hypervisor.VM, error)
	// Name is the factory's kind as the user selects it ("direct", ...), for status output.
	Name() string
	Close() error
}

// Kinds.
const (
	KindDirect = "direct"
	// KindTemplate clones VMs from a template: a VM booted once, its agent parked, its RAM
	// kept in a file on tmpfs and its device state saved. A clone maps that RAM
	// copy-on-write and loads the device state: it answers in well under 100 ms where a cold
	// boot takes most of a second under TCG, and shares the template's untouched pages with
	// every other clone.
	KindTemplate = "template"
)

// Request describes the VM one pod needs.
type Request struct {
	// ID names the VM (the pod id).
	ID string
	// Dir is the VM's private runtime directory (sockets, logs); it must exist.
	Dir string
	// ShareDir is exported to the guest over 9p (rootfs and volumes); it must exist.
	ShareDir string
	// CPUs and MemoryMiB size the VM; 0 takes the factory's default.
	CPUs      int
	MemoryMiB int
	// KernelParams are appended to the factory's. A restored VM has booted long ago, so
	// kinds that restore VMs boot requests that carry any directly.
	KernelParams []string
}

// ErrClosed is returned by GetVM after Close.
var ErrClosed = errors.New("factory closed")

// validate checks what every kind needs from a request.
func (r Request) validate() error {
	switch {
	case r.ID == "":
		return fmt.Errorf("vm request without an id: %w", errdefs.ErrInvalidArgument)
	case r.Dir == "":
		return fmt.Errorf("vm request %s without a directory: %w", r.ID, errdefs.ErrInvalidArgument)
	case r.ShareDir == "":
		return fmt.Errorf("vm request %s without a share directory: %w", r.ID, errdefs.ErrInvalidArgument)
	case r.CPUs < 0 || r.MemoryMiB < 0:
		return fmt.Errorf("vm request %s: negative size: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	return nil
}

// config merges the request into the factory's base configuration.
func (r Request) config(base hypervisor.Config) hypervisor.Config {
	cfg := base
	cfg.ID, cfg.Dir, cfg.ShareDir = r.ID, r.Dir, r.ShareDir
	if r.CPUs > 0 {
		cfg.CPUs = r.CPUs
	}
	if r.MemoryMiB > 0 {
		cfg.MemoryMiB = r.MemoryMiB
	}
	cfg.KernelParams = append(slices.Clone(base.KernelParams), r.KernelParams...)
	return cfg
}
