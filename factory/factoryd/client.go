package factoryd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/holder"
	"github.com/runv-project/runv/factory/internal/wire"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// Client is the cache kind in a pod daemon: it asks the factory daemon for a pooled VM and
// boots with Fallback (the policy entry's own kind) when the factory daemon is not
// running, has no VM for the request, or fails.
type Client struct {
	// Socket is the factory daemon's socket (SocketIn(root)).
	Socket string
	// Fallback boots what the factory daemon does not hand out.
	Fallback factory.Factory
}

var _ factory.Factory = (*Client)(nil)

// SocketIn is the factory daemon's socket under state root root.
func SocketIn(root string) string { return filepath.Join(root, Dir, Socket) }

// Wrapper returns the factory.Options.Cache of pod daemons under state root root: a policy
// entry with "cache" set asks the factory daemon first.
func Wrapper(root string) func(context.Context, factory.Factory, factory.Policy) (factory.Factory, error) {
	return func(_ context.Context, base factory.Factory, _ factory.Policy) (factory.Factory, error) {
		return &Client{Socket: SocketIn(root), Fallback: base}, nil
	}
}

// Name is factory.KindCache.
func (c *Client) Name() string { return factory.KindCache }

// Close closes the fallback.
func (c *Client) Close() error { return c.Fallback.Close() }

// GetVM gets a pooled VM from the factory daemon, or boots one with the fallback.
func (c *Client) GetVM(ctx context.Context, req factory.Request) (hypervisor.VM, error) {
	log := logging.G(ctx).With("factory", factory.KindCache, "vm", req.ID)
	start := time.Now()
	vm, err := c.get(ctx, req)
	if err == nil {
		log.Info("vm from the factory daemon", "qemu_pid", vm.Pid(), "grown", vm.Grown(), "took", time.Since(start))
		return vm, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("get vm %s: %w", req.ID, err)
	}
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		log.Info("no factory daemon: booting with the fallback", "socket", c.Socket, "fallback", c.Fallback.Name())
	case errors.Is(err, errdefs.ErrUnavailable):
		log.Info("the factory daemon has no VM for this request: booting with the fallback", "reason", err, "fallback", c.Fallback.Name())
	default:
		log.Warn("the factory daemon failed: booting with the fallback", "error", err, "fallback", c.Fallback.Name())
	}
	return c.Fallback.GetVM(ctx, req)
}

func (c *Client) get(ctx context.Context, req factory.Request) (*holder.VM, error) {
	resp, err := wire.Call(ctx, c.Socket, wire.Request{Op: wire.OpGet, ID: req.ID, Dir: req.Dir, ShareDir: req.ShareDir, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB})
	if err != nil {
		return nil, err
	}
	// The VM is ours now (its holder follows our pid): whatever fails below must kill it.
	return holder.Attach(ctx, req.ID, *resp.VM)
}
