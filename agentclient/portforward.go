package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/runv-project/runv/api/agentproto"
)

// closeForwardTimeout bounds the CLOSEFORWARD an aborted connection sends: a guest that does
// not answer must not hold the caller.
const closeForwardTimeout = 5 * time.Second

// DialPort connects to 127.0.0.1:port inside the guest (PORTFORWARD) and returns the
// connection, carried on a stream of its own. An error means the guest did not connect
// (nothing listens on the port) or did not answer before ctx ended. If ctx ends after the
// command was sent, the guest may still connect; it then writes into a stream the host no
// longer has, which the host discards, and that connection stays in the guest (within
// agentproto.MaxPortForwards) until its server closes it.
func (c *Client) DialPort(ctx context.Context, port uint16) (*PortConn, error) {
	seq := c.NextSeq()
	s, err := c.mux.Open(seq)
	if err != nil {
		return nil, fmt.Errorf("pod %s: forward to guest port %d: %w", c.opts.PodID, port, err)
	}
	if err := c.Call(ctx, agentproto.MsgPortForward, agentproto.PortForward{Port: port, Stream: seq}, nil); err != nil {
		s.Reset()
		return nil, fmt.Errorf("forward to guest port %d: %w", port, err)
	}
	return &PortConn{c: c, s: s, port: port}, nil
}

// PortConn is a TCP connection to a port on the guest's loopback. Read returns what the
// guest's server sends (io.EOF after its half close), Write sends to it; both may block
// on the stream's credit (backpressure), and Close unblocks them.
type PortConn struct {
	c    *Client
	s    *agentproto.Stream
	port uint16

	mu       sync.Mutex
	readEOF  bool // the guest ended its direction
	wroteEOF bool // we ended ours
	closed   bool
}

// Read reads what the guest's server sent.
func (p *PortConn) Read(b []byte) (int, error) {
	n, err := p.s.Read(b)
	if errors.Is(err, io.EOF) {
		p.mu.Lock()
		p.readEOF = true
		p.mu.Unlock()
	}
	return n, err
}

// Write sends b to the guest's server.
func (p *PortConn) Write(b []byte) (int, error) { return p.s.Write(b) }

// CloseWrite half-closes: the guest's server reads EOF, and can still answer.
func (p *PortConn) CloseWrite() error {
	p.mu.Lock()
	p.wroteEOF = true
	p.mu.Unlock()
	return p.s.CloseWrite()
}

// Close ends the connection. Unless both directions already ended, it aborts: the guest
// is told to close its connection (CLOSEFORWARD), and what it still sends is discarded.
func (p *PortConn) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	finished := p.readEOF && p.wroteEOF
	p.mu.Unlock()
	// Stop reading first: it unblocks a Read, and credits back what the guest sends
	// until it closed, so the guest's writer never waits on us.
	p.s.Close()
	var err error
	if !finished {
		ctx, cancel := context.WithTimeout(context.Background(), closeForwardTimeout)
		err = p.c.Call(ctx, agentproto.MsgCloseForward, agentproto.ForwardRef{Stream: p.s.Seq()}, nil)
		cancel()
		if err != nil {
			err = fmt.Errorf("abort the forward to guest port %d: %w", p.port, err)
		}
	}
	// Our EOF (sent once) lets both sides forget the stream; it also fails a Write that
	// waits for credit.
	if cerr := p.s.CloseWrite(); err == nil && cerr != nil && !errors.Is(cerr, agentproto.ErrStreamClosed) {
		err = cerr
	}
	return err
}
