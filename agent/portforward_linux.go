package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/runv-project/runv/api/agentproto"
)

// forwardDialTimeout bounds the connect to a guest port: on loopback it is answered at
// once unless the server's accept queue is full.
const forwardDialTimeout = 10 * time.Second

// portForwards are the guest ends of the host's port forwards (PORTFORWARD), by stream seq:
// a TCP connection to 127.0.0.1:PORT in the guest, whose bytes travel on one stream.
// The guest's network namespace is the pod's (every container runs in it), so loopback
// here is the pods' loopback.
type portForwards struct {
	mu sync.Mutex
	// open holds the forwards; a nil value reserves a seq while it connects.
	open map[uint64]*guestForward
}

type guestForward struct {
	conn *net.TCPConn
	s    *agentproto.Stream
}

func newPortForwards() *portForwards {
	return &portForwards{open: make(map[uint64]*guestForward)}
}

// start connects, opens the stream, acknowledges (ack) and relays in the background.
// Nothing is sent on the stream before the ACK, which the host waits for before it
// relays: the stream is open on both sides by then.
func (f *portForwards) start(ctx context.Context, m agentproto.PortForward, mux *agentproto.Mux, ack func() error) error {
	if m.Port == 0 {
		return errorf(agentproto.KindInvalid, "PORTFORWARD: port 0")
	}
	if m.Stream == 0 || m.Stream&agentproto.WindowUpdateBit != 0 {
		return errorf(agentproto.KindInvalid, "PORTFORWARD to port %d: invalid stream %#x", m.Port, m.Stream)
	}
	f.mu.Lock()
	if _, dup := f.open[m.Stream]; dup {
		f.mu.Unlock()
		return errorf(agentproto.KindAlreadyExists, "PORTFORWARD to port %d: stream %d is already forwarding", m.Port, m.Stream)
	}
	if len(f.open) >= agentproto.MaxPortForwards {
		f.mu.Unlock()
		return errorf(agentproto.KindState, "PORTFORWARD to port %d: %d forwards are open already", m.Port, agentproto.MaxPortForwards)
	}
	f.open[m.Stream] = nil
	f.mu.Unlock()
	release := func() {
		f.mu.Lock()
		delete(f.open, m.Stream)
		f.mu.Unlock()
	}

	conn, addr, err := dialLoopback(ctx, m.Port)
	if err != nil {
		release()
		return err
	}
	s, err := mux.Open(m.Stream)
	if err != nil {
		conn.Close()
		release()
		return fmt.Errorf("forward to %s: %w", addr, err)
	}
	g := &guestForward{conn: conn, s: s}
	f.mu.Lock()
	f.open[m.Stream] = g
	f.mu.Unlock()
	if err := ack(); err != nil {
		// The host never learns of the stream: drop it without a word.
		conn.Close()
		s.Reset()
		release()
		return err
	}
	go func() {
		defer release()
		g.relay()
	}()
	return nil
}

// dialLoopback connects to port on the guest's loopback: 127.0.0.1, and [::1] when that
// refuses, which is what containerd does in a runc pod's namespace (a server listening on
// ::1 only is reached there too).
func dialLoopback(ctx context.Context, port uint16) (*net.TCPConn, string, error) {
	d := net.Dialer{Timeout: forwardDialTimeout}
	v4 := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	c, err := d.DialContext(ctx, "tcp4", v4)
	if err == nil {
		return c.(*net.TCPConn), v4, nil
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return nil, v4, fmt.Errorf("connect to %s in the guest: %w", v4, err)
	}
	v6 := net.JoinHostPort("::1", strconv.Itoa(int(port)))
	c, err6 := d.DialContext(ctx, "tcp6", v6)
	if err6 != nil {
		return nil, v4, fmt.Errorf("connect to port %d in the guest: %s: %w; %s: %v", port, v4, err, v6, err6)
	}
	return c.(*net.TCPConn), v6, nil
}

// relay copies both ways until both directions ended: the host's EOF becomes a half close
// of the connection, the server's EOF (or a failed read) the stream's EOF. A write that
// fails stops that direction, discarding what still comes for it.
func (g *guestForward) relay() {
	toServer := make(chan struct{})
	go func() {
		defer close(toServer)
		if _, err := io.Copy(g.conn, g.s); err != nil {
			g.s.Close()
			return
		}
		g.conn.CloseWrite()
	}()
	// The stream's Write honours the host's credit: a host that stops reading stalls the
	// server by TCP's own backpressure, with one buffer in between.
	// Frames of the stream's full payload size: half the frames (and trips through the
	// emulated device) of io.Copy's 32 KiB.
	io.CopyBuffer(g.s, struct{ io.Reader }{g.conn}, make([]byte, agentproto.MaxStreamPayload))
	g.s.CloseWrite()
	<-toServer
	g.conn.Close()
	g.s.Close()
}

// abort closes the forward on stream seq at once (CLOSEFORWARD). A forward that already
// ended, or never existed, is not an error: the host aborts after its own side failed,
// which may be after the guest side finished.
func (f *portForwards) abort(seq uint64) {
	f.mu.Lock()
	g := f.open[seq]
	f.mu.Unlock()
	if g == nil {
		return
	}
	// Both copies fail: the server's connection is gone, and reading the stream stops.
	g.conn.Close()
	g.s.Close()
}

func (a *Agent) portForward(ctx context.Context, req *Request) (any, error) {
	var m agentproto.PortForward
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	return nil, a.forwards.start(ctx, m, a.streams(), func() error { return req.Ack(nil) })
}

func (a *Agent) closeForward(_ context.Context, req *Request) (any, error) {
	var m agentproto.ForwardRef
	if err := req.Decode(&m); err != nil {
		return nil, err
	}
	a.forwards.abort(m.Stream)
	return nil, nil
}
