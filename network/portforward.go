package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/runv-project/runv/api/agentproto"
)

// GuestConn is one TCP connection to a port on the guest's loopback, carried over the
// agent's stream channel. Close aborts it: both directions end at once, in the guest too.
type GuestConn interface {
	io.ReadWriteCloser
	// CloseWrite ends the host→guest direction (the guest's connection gets a FIN); the
	// other direction goes on.
	CloseWrite() error
}

// GuestDialer connects to 127.0.0.1:port inside the pod's VM.
type GuestDialer func(ctx context.Context, port uint16) (GuestConn, error)

// guestDialTimeout bounds a connect in the guest, and so how long an agent that never
// answers holds a forward's slot.
const guestDialTimeout = 30 * time.Second

// PortForwarder makes TCP connections to 127.0.0.1:PORT in the pod's network namespace
// reach 127.0.0.1:PORT in its VM, for every port: that is where containerd's CRI (and
// anything else doing what `kubectl port-forward` needs) dials, and where nothing listens
// on the host, because the pod's servers run in the VM. Connections are steered to one
// listener (loopbackSteer) and each is relayed through a GuestDialer.
type PortForwarder struct {
	steer *loopbackSteer
	dial  GuestDialer
	log   *slog.Logger
	// slots bounds the forwards open at once; a connection beyond it is closed at once.
	slots chan struct{}

	ctx    context.Context // cancelled by Close: dials in progress give up
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	active map[*net.TCPConn]struct{}
}

// ForwardLoopback starts forwarding 127.0.0.1 of the pod's namespace to the VM, with at
// most maxForwards connections at once. log names the pod.
func (p *Pod) ForwardLoopback(dial GuestDialer, maxForwards int, log *slog.Logger) (*PortForwarder, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("port forwarding in %s: the pod's network is closed", p.dir)
	}
	steer, err := steerLoopback(p.ns)
	if err != nil {
		return nil, fmt.Errorf("port forwarding: %w", err)
	}
	f := &PortForwarder{
		steer:  steer,
		dial:   dial,
		log:    log,
		slots:  make(chan struct{}, maxForwards),
		active: make(map[*net.TCPConn]struct{}),
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *PortForwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.steer.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.log.Warn("port forwarding stopped: accept failed", "error", err)
			}
			return
		}
		port := c.LocalAddr().(*net.TCPAddr).Port
		select {
		case f.slots <- struct{}{}:
		default:
			f.log.Warn("port-forward connection refused: too many forwards open", "port", port, "max", cap(f.slots))
			c.Close()
			continue
		}
		f.mu.Lock()
		f.active[c] = struct{}{}
		f.mu.Unlock()
		f.wg.Add(1)
		go f.forward(c, uint16(port))
	}
}

// forward relays one connection. A guest port nobody listens on closes the connection: the
// client sees it closed, as a refused dial in containerd ends its forward.
func (f *PortForwarder) forward(c *net.TCPConn, port uint16) {
	defer func() {
		c.Close()
		f.mu.Lock()
		delete(f.active, c)
		f.mu.Unlock()
		<-f.slots
		f.wg.Done()
	}()
	ctx, cancel := context.WithTimeout(f.ctx, guestDialTimeout)
	g, err := f.dial(ctx, port)
	cancel()
	if err != nil {
		f.log.Info("port-forward: cannot connect to the guest's port", "port", port, "error", err)
		return
	}
	relay(c, g)
}

// relay copies both ways until both directions ended. An end of input is passed on as a
// half close; an error on either side aborts both, so that neither copy waits for a
// peer that is gone.
func relay(c *net.TCPConn, g GuestConn) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			c.Close()
			g.Close()
		})
	}
	up := make(chan struct{})
	go func() {
		defer close(up)
		// Writes of a whole stream frame each: io.Copy's 32 KiB would send twice the
		// frames through the emulated channel.
		if _, err := io.CopyBuffer(g, struct{ io.Reader }{c}, make([]byte, agentproto.MaxStreamPayload)); err != nil {
			abort()
			return
		}
		if err := g.CloseWrite(); err != nil {
			abort()
		}
	}()
	if _, err := io.Copy(c, g); err != nil {
		abort()
	} else if err := c.CloseWrite(); err != nil {
		abort()
	}
	<-up
	g.Close()
}

// Close stops forwarding: the program leaves the namespace, the listener closes, every open
// forward is aborted, and Close returns once their goroutines ended.
func (f *PortForwarder) Close() error {
	err := f.steer.Close()
	f.cancel()
	f.mu.Lock()
	for c := range f.active {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return err
}
