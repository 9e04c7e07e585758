package factoryd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
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
	resp, err := wire.Call(ctx, c.Socket, getRequest(req, 0))
	if err != nil {
		return nil, err
	}
	// The VM is ours now (its holder follows our pid): whatever fails below must kill it.
	return holder.Attach(ctx, req.ID, *resp.VM)
}

// Prefetch asks the factory daemon at socket for a VM for child, a process the caller just
// started: its pod daemon, which takes the VM over with Prefetched. The request travels
// while the pod daemon starts (5 ms of exec and Go's start, idle) instead of after it.
func Prefetch(ctx context.Context, socket string, req factory.Request, child int) (wire.VMInfo, error) {
	resp, err := wire.Call(ctx, socket, getRequest(req, child))
	if err != nil {
		return wire.VMInfo{}, err
	}
	return *resp.VM, nil
}

// getRequest is the factory daemon's get of a VM for req; for child (0: for the caller
// itself), as Prefetch asks.
func getRequest(req factory.Request, child int) wire.Request {
	return wire.Request{Op: wire.OpGet, ID: req.ID, Dir: req.Dir, ShareDir: req.ShareDir, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, Child: child}
}

// prefetchMessage is what a pod daemon's starter tells it about the VM it fetched.
type prefetchMessage struct {
	// Request is what the VM was fetched for.
	Request factory.Request `json:"request"`
	// VM is the factory daemon's answer; nil with Error.
	VM    *wire.VMInfo `json:"vm,omitempty"`
	Error string       `json:"error,omitempty"`
}

// WritePrefetched tells the pod daemon reading w (Prefetched) what Prefetch returned for
// req, as one JSON line.
func WritePrefetched(w io.Writer, req factory.Request, vm wire.VMInfo, err error) error {
	m := prefetchMessage{Request: req}
	if err != nil {
		m.Error = err.Error()
	} else {
		m.VM = &vm
	}
	return json.NewEncoder(w).Encode(m)
}

// Prefetched is f in a pod daemon whose starter asked the factory daemon for the pod's VM
// (Prefetch) and writes the answer to r (WritePrefetched): the first GetVM takes that VM
// over when it was fetched for the same request, and asks f otherwise (a VM fetched for
// another request is killed; with none, f asks the factory daemon itself or boots).
func Prefetched(f factory.Factory, r io.ReadCloser) factory.Factory {
	return &prefetched{Factory: f, r: r}
}

type prefetched struct {
	factory.Factory
	once sync.Once
	r    io.ReadCloser
}

func (p *prefetched) GetVM(ctx context.Context, req factory.Request) (hypervisor.VM, error) {
	var m *prefetchMessage
	p.once.Do(func() { m = readPrefetched(ctx, p.r) })
	if m == nil || m.VM == nil {
		return p.Factory.GetVM(ctx, req)
	}
	log := logging.G(ctx).With("factory", factory.KindCache, "vm", req.ID)
	vm, err := holder.Attach(ctx, req.ID, *m.VM)
	if err != nil {
		// As for a VM this process asked for (Client.get): its holder follows us still.
		log.Warn("the VM fetched by the pod's starter cannot be taken over: asking again", "error", err)
		return p.Factory.GetVM(ctx, req)
	}
	if !sameRequest(m.Request, req) {
		log.Warn("the VM fetched by the pod's starter is for another request: killing it", "fetched", m.Request, "wanted", req)
		vm.Kill()
		return p.Factory.GetVM(ctx, req)
	}
	log.Info("vm from the factory daemon, fetched by the pod's starter", "qemu_pid", vm.Pid(), "grown", vm.Grown())
	return vm, nil
}

func sameRequest(a, b factory.Request) bool {
	return a.ID == b.ID && a.Dir == b.Dir && a.ShareDir == b.ShareDir && a.CPUs == b.CPUs &&
		a.MemoryMiB == b.MemoryMiB && slices.Equal(a.KernelParams, b.KernelParams)
}

// readPrefetched reads the starter's message, within ctx; nil if there is none (the
// starter failed or exited first). It closes r.
func readPrefetched(ctx context.Context, r io.ReadCloser) *prefetchMessage {
	got := make(chan *prefetchMessage, 1)
	go func() {
		defer r.Close()
		var m prefetchMessage
		line, err := bufio.NewReader(io.LimitReader(r, 64<<10)).ReadBytes('\n')
		if err != nil || json.Unmarshal(line, &m) != nil {
			got <- nil
			return
		}
		if m.Error != "" {
			logging.G(ctx).Info("the pod's starter got no VM from the factory daemon", "reason", m.Error)
		}
		got <- &m
	}()
	select {
	case m := <-got:
		return m
	case <-ctx.Done():
		return nil
	}
}
