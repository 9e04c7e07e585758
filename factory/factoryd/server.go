// Package factoryd is the factory daemon (`runv manage factory-daemon`, Main): it keeps
// pools of ready VMs (factory.Cache over holder.Factory) and hands one to each pod daemon
// that asks (Client, the cache kind of pod daemons); the pod daemon then owns it. Each
// pooled VM lives in a holder process of its own: package holder says why and how a VM
// changes hands.
package factoryd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/holder"
	"github.com/runv-project/runv/factory/internal/wire"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/procstat"
	"github.com/runv-project/runv/logging"
)

// Names under the state root.
const (
	// Dir is the factory daemon's directory under the state root. "@" keeps it apart from
	// container ids, as state.PodsDir.
	Dir = "@factory"
	// Socket is the factory daemon's socket in Dir.
	Socket = "factory.sock"
)

// Status is the factory daemon's state (GetStatus); PoolStatus is one pool's.
type (
	Status     = wire.Status
	PoolStatus = wire.PoolStatus
)

// defaultGetTimeout bounds a get whose request names no timeout.
const defaultGetTimeout = 2 * time.Minute

// errNotPooled is the pools' fallback: the factory daemon hands out pooled VMs only (a VM
// it booted on demand would be no faster than the pod daemon booting it), so a request no
// pool can serve goes back to the pod daemon, which boots it itself.
var errNotPooled = fmt.Errorf("no pooled VM for this request: %w", errdefs.ErrUnavailable)

type refuse struct{}

func (refuse) GetVM(context.Context, factory.Request) (hypervisor.VM, error) {
	return nil, errNotPooled
}
func (refuse) Name() string { return "none" }
func (refuse) Close() error { return nil }

// Refuse is the fallback the factory daemon gives its pools.
var Refuse factory.Factory = refuse{}

// Pool is one pool of the factory daemon.
type Pool struct {
	Status PoolStatus // static part: name, kind, size, limits
	Cache  *factory.Cache
}

// Server is the factory daemon: it hands pooled VMs to pod daemons.
type Server struct {
	pools []*Pool

	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
}

// NewServer serves pools, in order of preference: a request goes to the first pool whose
// VMs fit it, else to the first one that can grow to it.
func NewServer(pools []*Pool) *Server { return &Server{pools: pools} }

// Serve answers requests on ln until ln is closed.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.wg.Wait()
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("factory daemon: accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			wire.ServeConn(conn, func(c net.Conn, req wire.Request) wire.Response { return s.handle(ctx, c, req) })
		}()
	}
}

func (s *Server) handle(ctx context.Context, conn net.Conn, req wire.Request) wire.Response {
	switch req.Op {
	case wire.OpGet:
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			return wire.ErrResponse(fmt.Errorf("get: not a unix socket: %w", errdefs.ErrInvalidArgument))
		}
		pid, err := wire.PeerPid(uc)
		if err != nil {
			return wire.ErrResponse(fmt.Errorf("get: who is asking: %w", err))
		}
		if req.Child != 0 {
			// A pid is recycled only once its parent reaped it: a child of the asker
			// now is that child until the asker says so.
			if ppid, err := procstat.ParentOf(req.Child); err != nil || ppid != pid {
				return wire.ErrResponse(fmt.Errorf("get vm %s: process %d is not a child of the asking process %d: %w", req.ID, req.Child, pid, errdefs.ErrFailedPrecondition))
			}
			pid = req.Child
		}
		octx, cancel := wire.OpContext(ctx, req, defaultGetTimeout)
		defer cancel()
		info, err := s.get(octx, pid, factory.Request{ID: req.ID, Dir: req.Dir, ShareDir: req.ShareDir, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB})
		if err != nil {
			return wire.ErrResponse(err)
		}
		return wire.Response{VM: &info}
	case wire.OpStatus:
		if req.Wait {
			octx, cancel := wire.OpContext(ctx, req, defaultGetTimeout)
			defer cancel()
			for _, p := range s.pools {
				if err := p.Cache.WaitFull(octx); err != nil {
					return wire.ErrResponse(fmt.Errorf("pool %s: %w", p.Status.Name, err))
				}
			}
		}
		st := s.status()
		return wire.Response{Status: &st}
	}
	return wire.ErrResponse(fmt.Errorf("unknown op %q: %w", req.Op, errdefs.ErrInvalidArgument))
}

func (s *Server) status() Status {
	st := Status{Pid: os.Getpid()}
	for _, p := range s.pools {
		ps := p.Status
		ps.CacheStatus = p.Cache.Status()
		st.Pools = append(st.Pools, ps)
	}
	return st
}

// pick chooses the pool for a request of cpus and mem (0: the pool's size).
func (s *Server) pick(cpus, mem int) *Pool {
	fits := func(p *Pool, maxCPUs, maxMem int) bool {
		c, m := cpus, mem
		if c == 0 {
			c = p.Status.CPUs
		}
		if m == 0 {
			m = p.Status.MemoryMiB
		}
		return c <= maxCPUs && m <= maxMem
	}
	for _, p := range s.pools {
		if fits(p, p.Status.CPUs, p.Status.MemoryMiB) {
			return p
		}
	}
	for _, p := range s.pools {
		if fits(p, max(p.Status.CPUs, p.Status.MaxCPUs), max(p.Status.MemoryMiB, p.Status.MaxMemoryMiB)) {
			return p
		}
	}
	return nil
}

// get hands a pooled VM to pod daemon pid: the pool renames the VM's share onto the pod's
// and grows it if need be, then the holder moves the VM's directory onto the pod's and
// starts following pid instead of us.
func (s *Server) get(ctx context.Context, pid int, req factory.Request) (wire.VMInfo, error) {
	if req.Dir == "" {
		return wire.VMInfo{}, fmt.Errorf("get vm %s: no vm directory: %w", req.ID, errdefs.ErrInvalidArgument)
	}
	p := s.pick(req.CPUs, req.MemoryMiB)
	if p == nil {
		return wire.VMInfo{}, fmt.Errorf("get vm %s (%d vCPUs, %d MiB): %w", req.ID, req.CPUs, req.MemoryMiB, errNotPooled)
	}
	log := logging.G(ctx).With("vm", req.ID, "pool", p.Status.Name, "owner", pid)
	start := time.Now()
	vm, err := p.Cache.GetVM(ctx, req)
	if err != nil {
		return wire.VMInfo{}, fmt.Errorf("get vm %s: %w", req.ID, err)
	}
	cv, _ := vm.(*factory.CachedVM)
	var hv *holder.VM
	if cv != nil {
		hv, _ = cv.Unwrap().(*holder.VM)
	}
	if hv == nil {
		// Only VMs of holders can change hands.
		vm.Kill()
		return wire.VMInfo{}, fmt.Errorf("get vm %s: pool %s returned a VM without a holder: %w", req.ID, p.Status.Name, errdefs.ErrFailedPrecondition)
	}
	info, err := hv.Adopt(ctx, pid, req.Dir)
	if err != nil {
		hv.Kill()
		return wire.VMInfo{}, fmt.Errorf("get vm %s: %w", req.ID, err)
	}
	info.ID, info.Grown = req.ID, cv.Grown()
	log.Info("vm handed out", "pooled", cv.Pooled, "grown", info.Grown, "took", time.Since(start))
	return info, nil
}

// Close closes every pool: the pooled VMs are killed, those handed out live on.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var errs []error
	for _, p := range s.pools {
		errs = append(errs, p.Cache.Close())
	}
	return errors.Join(errs...)
}

// GetStatus asks the factory daemon at socket for its status; with wait, it first waits
// until every pool is full (or a refill failed), within ctx.
func GetStatus(ctx context.Context, socket string, wait bool) (Status, error) {
	resp, err := wire.Call(ctx, socket, wire.Request{Op: wire.OpStatus, Wait: wait})
	if err != nil {
		return Status{}, fmt.Errorf("factory daemon at %s: %w", socket, err)
	}
	return *resp.Status, nil
}
