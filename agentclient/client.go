// Package client is the host side of the guest agent protocol (docs/protocol.md): commands
// over the control channel, matched to their ACK/ERROR by id, and process stdio multiplexed
// over the stream channel.
//
// The guest is untrusted. Any malformed frame, an ACK/ERROR for an id never issued, or a
// message the guest may not send fails the client: every pending and future call returns
// an error wrapping agentproto.ErrProtocol and Done is closed. The client allocates nothing
// in proportion to what the guest sends beyond the protocol's caps.
//
// The client couples commands and streams in exactly two places, both keyed by the
// agentproto.Stdio the host allocated:
//
//   - Call recognises the payloads that name a process's streams (agentproto.Container for
//     NEWCONTAINER, agentproto.ExecProcess for EXECCMD). The guest opens its side of the
//     streams before it answers, so the host holds back stdin until the ACK: data sent
//     earlier could reach a guest that has not opened the stream yet and be discarded.
//     An ERROR fails the streams and the process's watch.
//   - Watch ties a process's exit to its output streams: Wait returns only after the
//     PROCESSEXIT event and after the consumer read each output stream to EOF (or closed
//     it), so an exit is never reported ahead of the output it follows.
package agentclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// Error classes of agent errors, by RemoteError.Kind. They are the errdefs classes, so a
// class survives the trip through the pod daemon's gRPC API to the CLI.
var (
	ErrNotFound           = errdefs.ErrNotFound
	ErrAlreadyExists      = errdefs.ErrAlreadyExists
	ErrInvalid            = errdefs.ErrInvalidArgument
	ErrFailedPrecondition = errdefs.ErrFailedPrecondition
	ErrNotExecutable      = errdefs.ErrNotExecutable
)

var kindClasses = map[string]error{
	agentproto.KindNotFound:      ErrNotFound,
	agentproto.KindAlreadyExists: ErrAlreadyExists,
	agentproto.KindInvalid:       ErrInvalid,
	agentproto.KindState:         ErrFailedPrecondition,
	agentproto.KindNotExecutable: ErrNotExecutable,
}

var (
	// ErrClosed is the error after Close.
	ErrClosed = errors.New("agent client closed")
	// ErrVersionMismatch classifies a guest agent speaking another protocol version.
	ErrVersionMismatch = errors.New("agent protocol version mismatch")
)

// logInterval rate-limits log lines whose volume the guest controls.
const logInterval = 5 * time.Second

// Options configure a Client.
type Options struct {
	// Logf receives diagnostics; nil discards them.
	Logf func(format string, args ...any)
	// PodID names the pod in errors and logs.
	PodID string
	// SlowAfter and OnSlow: a command the agent has not answered after SlowAfter is
	// reported to OnSlow (with how long it has waited), again every SlowAfter, and its late
	// answer logged through Logf. Zero or nil: not watched.
	SlowAfter time.Duration
	OnSlow    func(t agentproto.MsgType, waited time.Duration)
}

// Client speaks to one pod's guest agent. Its methods are safe for concurrent use.
type Client struct {
	opts Options
	ctl  net.Conn
	mux  *agentproto.Mux
	seq  atomic.Uint64

	ready     chan struct{}
	readyOnce sync.Once
	readyInfo agentproto.Ready // the first READY's payload, set before ready is closed
	done      chan struct{}
	closed    chan struct{} // Close was called (as opposed to a failure)
	kick      chan struct{} // capacity 1: the write queue grew
	exitKick  chan struct{} // capacity 1: the exit queue grew

	mu       sync.Mutex
	err      error
	nextID   uint64
	pending  map[uint64]*call
	outq     []*call // frames waiting for the writer goroutine
	procs    map[uint64]*procIO
	watches  map[procKey]*Process
	exitsCh  chan agentproto.ProcessExit
	exitq    []agentproto.ProcessExit
	loggedAt time.Time
	dropped  int
}

type procKey struct{ container, process string }

// call is one command in flight. Its state is guarded by Client.mu.
type call struct {
	id      uint64
	typ     agentproto.MsgType
	frame   []byte
	reply   chan agentproto.ControlFrame // capacity 1
	written bool
	// abandoned: the caller gave up; a reply that still arrives is consumed silently.
	abandoned bool
	// proc are the streams the command names, opened by the guest once it answers.
	proc *procIO
}

// New starts speaking the protocol over ch. The client owns the channels: it closes them
// when it fails or is closed.
func New(ch *hypervisor.Channels, opts Options) *Client {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	c := &Client{
		opts:     opts,
		ctl:      ch.Control,
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		closed:   make(chan struct{}),
		kick:     make(chan struct{}, 1),
		exitKick: make(chan struct{}, 1),
		pending:  make(map[uint64]*call),
		procs:    make(map[uint64]*procIO),
		watches:  make(map[procKey]*Process),
	}
	c.mux = agentproto.NewMux(ch.Stream, func(format string, args ...any) {
		opts.Logf("pod %s: "+format, append([]any{opts.PodID}, args...)...)
	})
	go c.readLoop()
	go c.writeLoop()
	go func() {
		<-c.mux.Done()
		c.fail(c.classify("stream channel", c.mux.Err()))
	}()
	return c
}

// Done is closed once the client failed or was closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is nil while the client works, then why it stopped: ErrClosed, an error wrapping
// hypervisor.ErrVMExited when a channel closed, or one wrapping agentproto.ErrProtocol.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close stops the client and closes both channels.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

// classify turns a channel failure into the client's error.
func (c *Client) classify(channel string, err error) error {
	switch {
	case errors.Is(err, ErrClosed), errors.Is(err, agentproto.ErrMuxClosed):
		return ErrClosed
	case errors.Is(err, agentproto.ErrProtocol) && !errors.Is(err, io.EOF):
		return fmt.Errorf("pod %s: %s: %w", c.opts.PodID, channel, err)
	default:
		// The channels are the VM's sockets: they end when QEMU exits.
		return fmt.Errorf("pod %s: %s closed (%v): %w", c.opts.PodID, channel, err, hypervisor.ErrVMExited)
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if errors.Is(err, ErrClosed) {
		close(c.closed)
	}
	close(c.done)
	c.mu.Unlock()
	if !errors.Is(err, ErrClosed) {
		c.opts.Logf("pod %s: agent connection failed: %v", c.opts.PodID, err)
	}
	c.ctl.Close()
	c.mux.Close()
}

func (c *Client) signal() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// WaitReady waits for the READY a freshly booted agent sends and returns its payload (the
// agent's boot steps, for the caller's log). A clone restored from a template sends none:
// go straight to Handshake.
func (c *Client) WaitReady(ctx context.Context) (agentproto.Ready, error) {
	select {
	case <-c.ready:
		return c.readyInfo, nil
	case <-c.done:
		return agentproto.Ready{}, fmt.Errorf("wait for the agent's READY: %w", c.Err())
	case <-ctx.Done():
		return agentproto.Ready{}, fmt.Errorf("pod %s: wait for the agent's READY: %w", c.opts.PodID, ctx.Err())
	}
}

// Handshake checks that the agent speaks agentproto.Version.
func (c *Client) Handshake(ctx context.Context) (agentproto.VersionInfo, error) {
	var v agentproto.VersionInfo
	if err := c.Call(ctx, agentproto.MsgGetVersion, nil, &v); err != nil {
		return v, fmt.Errorf("version handshake: %w", err)
	}
	if v.Version != agentproto.Version {
		return v, fmt.Errorf("pod %s: guest agent speaks protocol version %d, this runv speaks %d: rebuild and reinstall the initrd (make initrd install): %w",
			c.opts.PodID, v.Version, agentproto.Version, ErrVersionMismatch)
	}
	return v, nil
}

// hostCommands are the types the host may send.
var hostCommands = map[agentproto.MsgType]bool{
	agentproto.MsgGetVersion: true, agentproto.MsgStartPod: true, agentproto.MsgDestroyPod: true,
	agentproto.MsgExecCmd: true, agentproto.MsgWinSize: true, agentproto.MsgPing: true,
	agentproto.MsgNewContainer: true, agentproto.MsgOnlineCPUMem: true, agentproto.MsgSetupNetwork: true,
	agentproto.MsgRemoveContainer: true, agentproto.MsgSignalProcess: true,
	agentproto.MsgStartContainer: true, agentproto.MsgPauseContainer: true,
	agentproto.MsgResumeContainer: true, agentproto.MsgListProcesses: true,
	agentproto.MsgUpdateContainer: true, agentproto.MsgStats: true, agentproto.MsgCloseStdin: true,
	agentproto.MsgWarmup: true, agentproto.MsgPortForward: true, agentproto.MsgCloseForward: true,
}

// Call sends command t with payload (nil: none) and waits for its answer or ctx. An ACK's
// data is decoded into reply (nil: ignored). An ERROR returns an error wrapping the
// *agentproto.RemoteError and, for known kinds, the class (ErrNotFound, ...). When ctx ends
// first the command may still run in the guest: its late answer is discarded.
func (c *Client) Call(ctx context.Context, t agentproto.MsgType, payload any, reply any) error {
	if !hostCommands[t] {
		return fmt.Errorf("pod %s: %s is not a host command: %w", c.opts.PodID, t, ErrInvalid)
	}
	f, err := agentproto.Marshal(t, 0, payload)
	if err != nil {
		return fmt.Errorf("pod %s: %w", c.opts.PodID, err)
	}
	cl := &call{typ: t, reply: make(chan agentproto.ControlFrame, 1)}

	c.mu.Lock()
	c.nextID++
	cl.id = c.nextID
	c.mu.Unlock()
	f.ID = cl.id
	var buf bytes.Buffer
	if err := agentproto.WriteControl(&buf, f); err != nil {
		return fmt.Errorf("pod %s: %w", c.opts.PodID, err)
	}
	cl.frame = buf.Bytes()

	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", t, err)
	}
	if stdio, ok := namedStdio(t, payload); ok {
		cl.proc = c.procs[stdio.Stdio]
	}
	c.pending[cl.id] = cl
	c.outq = append(c.outq, cl)
	c.mu.Unlock()
	c.signal()

	sent := time.Now()
	var slow <-chan time.Time
	if c.opts.SlowAfter > 0 && c.opts.OnSlow != nil {
		ticker := time.NewTicker(c.opts.SlowAfter)
		defer ticker.Stop()
		slow = ticker.C
	}
	reported := false
	for {
		select {
		case <-slow:
			reported = true
			c.opts.OnSlow(t, time.Since(sent))
		case r := <-cl.reply:
			if reported {
				c.opts.Logf("pod %s: the agent answered %s after %s", c.opts.PodID, t, time.Since(sent).Round(time.Millisecond))
			}
			return c.finishCall(cl, r, reply)
		case <-c.done:
			return fmt.Errorf("%s: %w", t, c.Err())
		case <-ctx.Done():
			c.mu.Lock()
			select {
			case r := <-cl.reply: // answered while we were giving up
				c.mu.Unlock()
				return c.finishCall(cl, r, reply)
			default:
			}
			cl.abandoned = true
			if !cl.written {
				// The guest never saw it: forget the id, the writer skips the frame.
				delete(c.pending, cl.id)
				if cl.proc != nil {
					c.resolveLocked(cl.proc, fmt.Errorf("%s not sent: %w", t, ctx.Err()))
				}
			}
			c.mu.Unlock()
			return fmt.Errorf("pod %s: %s: %w", c.opts.PodID, t, ctx.Err())
		}
	}
}

// namedStdio returns the streams a command's payload names.
func namedStdio(t agentproto.MsgType, payload any) (agentproto.Stdio, bool) {
	switch p := payload.(type) {
	case agentproto.Container:
		return p.IO, t == agentproto.MsgNewContainer
	case *agentproto.Container:
		return p.IO, p != nil && t == agentproto.MsgNewContainer
	case agentproto.ExecProcess:
		return p.IO, t == agentproto.MsgExecCmd
	case *agentproto.ExecProcess:
		return p.IO, p != nil && t == agentproto.MsgExecCmd
	}
	return agentproto.Stdio{}, false
}

// remoteError wraps an agent's ERROR with its class, so that both errors.Is(err, ErrNotFound)
// and errors.As(err, **agentproto.RemoteError) work.
func (c *Client) remoteError(t agentproto.MsgType, e *agentproto.RemoteError) error {
	if class, ok := kindClasses[e.Kind]; ok {
		return fmt.Errorf("pod %s: %s: %w: %w", c.opts.PodID, t, class, e)
	}
	return fmt.Errorf("pod %s: %s: %w", c.opts.PodID, t, e)
}

func (c *Client) finishCall(cl *call, r agentproto.ControlFrame, reply any) error {
	if r.Type == agentproto.MsgError {
		return c.remoteError(cl.typ, r.Error)
	}
	if reply != nil {
		if err := r.Unmarshal(reply); err != nil {
			err = fmt.Errorf("pod %s: reply to %s: %w", c.opts.PodID, cl.typ, err)
			c.fail(err)
			return err
		}
	}
	return nil
}

// writeLoop sends queued command frames. It is the only writer of the control channel, so
// frames never interleave, and a guest that stops reading blocks it rather than callers,
// who can still give up through their ctx.
func (c *Client) writeLoop() {
	for {
		c.mu.Lock()
		var next *call
		for len(c.outq) > 0 && next == nil {
			next = c.outq[0]
			c.outq[0] = nil
			c.outq = c.outq[1:]
			if next.abandoned {
				next = nil
			}
		}
		if next != nil {
			next.written = true
		}
		failed := c.err != nil
		c.mu.Unlock()
		if failed {
			return
		}
		if next == nil {
			select {
			case <-c.kick:
			case <-c.done:
			}
			continue
		}
		if _, err := c.ctl.Write(next.frame); err != nil {
			c.fail(c.classify("control channel", fmt.Errorf("write %s: %w", next.typ, err)))
			return
		}
	}
}

// eofReader remembers that the channel ended, so that a frame cut short by the VM dying
// reads as the VM exiting rather than as a protocol error.
type eofReader struct {
	r   io.Reader
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.eof = true
	}
	return n, err
}

func (c *Client) readLoop() {
	r := &eofReader{r: c.ctl}
	for {
		f, err := agentproto.ReadControl(r)
		if err != nil {
			if r.eof {
				err = fmt.Errorf("%v: %w", err, io.EOF)
			}
			c.fail(c.classify("control channel", err))
			return
		}
		if err := c.dispatch(f); err != nil {
			c.fail(fmt.Errorf("pod %s: control channel: %w", c.opts.PodID, err))
			return
		}
	}
}

func (c *Client) dispatch(f agentproto.ControlFrame) error {
	switch f.Type {
	case agentproto.MsgReady:
		// Only the first one matters; a later one (an agent reconnecting) is harmless. Its
		// payload is optional: an empty one is a READY all the same.
		var r agentproto.Ready
		if len(f.Data) > 0 {
			if err := f.Unmarshal(&r); err != nil {
				return err
			}
		}
		c.readyOnce.Do(func() {
			c.readyInfo = r
			close(c.ready)
		})
		return nil
	case agentproto.MsgAck, agentproto.MsgError:
		c.mu.Lock()
		defer c.mu.Unlock()
		cl, ok := c.pending[f.ID]
		if !ok || !cl.written {
			return fmt.Errorf("%w: %s for id %d, which is not awaiting an answer", agentproto.ErrProtocol, f.Type, f.ID)
		}
		delete(c.pending, f.ID)
		if cl.proc != nil {
			var err error
			if f.Type == agentproto.MsgError {
				err = c.remoteError(cl.typ, f.Error)
			}
			c.resolveLocked(cl.proc, err)
		}
		if !cl.abandoned {
			cl.reply <- f
		}
		return nil
	case agentproto.MsgProcessExit:
		var e agentproto.ProcessExit
		if err := f.Unmarshal(&e); err != nil {
			return err
		}
		return c.processExit(e)
	default:
		return fmt.Errorf("%w: unexpected %s (id %d) from the guest", agentproto.ErrProtocol, f.Type, f.ID)
	}
}

func (c *Client) processExit(e agentproto.ProcessExit) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.watches[procKey{e.Container, e.Process}]
	if p == nil {
		c.dropped++
		if now := time.Now(); now.Sub(c.loggedAt) >= logInterval {
			c.opts.Logf("pod %s: ignoring exits of unwatched processes: %d since the last report, latest %q/%q", c.opts.PodID, c.dropped, e.Container, e.Process)
			c.loggedAt, c.dropped = now, 0
		}
		return nil
	}
	if p.exitSeen {
		return fmt.Errorf("%w: second PROCESSEXIT for container %q process %q", agentproto.ErrProtocol, e.Container, e.Process)
	}
	p.exitSeen = true
	p.exit = e
	close(p.exited)
	return nil
}

// NextSeq allocates a stream seq, unique for the life of the client.
func (c *Client) NextSeq() uint64 { return c.seq.Add(1) }
