package factory

import (
	"context"
	"fmt"
	"sync"

	"github.com/runv-project/runv/hypervisor"
)

// Direct cold-boots a new VM for every request.
type Direct struct {
	launcher hypervisor.Launcher
	base     hypervisor.Config

	mu     sync.Mutex
	closed bool
}

var _ Factory = (*Direct)(nil)

// NewDirect returns a factory that boots VMs with l from base (kernel, initrd, machine,
// accelerator, default size); each request supplies the id, directories and size.
func NewDirect(l hypervisor.Launcher, base hypervisor.Config) *Direct {
	return &Direct{launcher: l, base: base}
}

// GetVM boots a VM and returns it once the hypervisor runs it; the guest is still booting
// and its agent will announce itself.
func (d *Direct) GetVM(ctx context.Context, req Request) (hypervisor.VM, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("get vm %s: %w", req.ID, ErrClosed)
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	return d.launcher.Launch(ctx, req.config(d.base))
}

// Name is KindDirect.
func (d *Direct) Name() string { return KindDirect }

// Close makes later GetVM calls fail. VMs already handed out are not touched.
func (d *Direct) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}
