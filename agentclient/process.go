package agentclient

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/runv-project/runv/api/agentproto"
)

// procIO is the host side of one process's streams, from OpenStreams until the command
// naming them was answered.
type procIO struct {
	stdio  agentproto.Stdio
	main   *agentproto.Stream // stdin (host→guest) and stdout (guest→host)
	errS   *agentproto.Stream // stderr; nil for terminals
	stdin  *stdinWriter       // nil with NoStdin
	stdout *outputReader
	stderr *outputReader // nil for terminals

	// resolved is closed once the guest answered the command naming the streams; startErr
	// (set before) says whether it failed. Guarded by Client.mu until closed.
	resolved chan struct{}
	startErr error
	// closeStdin: stdin was closed before the guest opened the stream.
	closeStdin bool
	watched    bool
}

// OpenStreams opens the streams of a process about to be created with stdio (allocated with
// NextSeq). stdin is nil with NoStdin, stderr is nil when stdio.Stderr is 0 (terminal).
// Stdin writes are held back until the guest answered the NEWCONTAINER/EXECCMD naming the
// streams; output must be read to EOF or closed, or the process's exit is never reported.
func (c *Client) OpenStreams(stdio agentproto.Stdio) (stdin io.WriteCloser, stdout, stderr io.ReadCloser, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.openLocked(stdio)
	if err != nil {
		return nil, nil, nil, err
	}
	stdin, stdout, stderr = p.streams()
	return stdin, stdout, stderr, nil
}

func (p *procIO) streams() (stdin io.WriteCloser, stdout, stderr io.ReadCloser) {
	// Absent streams must be nil interfaces, not typed nils.
	if p.stdin != nil {
		stdin = p.stdin
	}
	stdout = p.stdout
	if p.stderr != nil {
		stderr = p.stderr
	}
	return stdin, stdout, stderr
}

func (c *Client) openLocked(stdio agentproto.Stdio) (*procIO, error) {
	if c.err != nil {
		return nil, fmt.Errorf("open streams: %w", c.err)
	}
	if stdio.Stdio == 0 || stdio.Stdio == stdio.Stderr {
		return nil, fmt.Errorf("pod %s: open streams %+v: stdio needs a seq of its own: %w", c.opts.PodID, stdio, ErrInvalid)
	}
	main, err := c.mux.Open(stdio.Stdio)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", c.opts.PodID, err)
	}
	p := &procIO{stdio: stdio, main: main, resolved: make(chan struct{})}
	if stdio.Stderr != 0 {
		if p.errS, err = c.mux.Open(stdio.Stderr); err != nil {
			main.Reset()
			return nil, fmt.Errorf("pod %s: %w", c.opts.PodID, err)
		}
		p.stderr = newOutputReader(p.errS)
	}
	p.stdout = newOutputReader(main)
	if !stdio.NoStdin {
		p.stdin = &stdinWriter{c: c, p: p}
	}
	c.procs[stdio.Stdio] = p
	return p, nil
}

// resolveLocked records the guest's answer to the command naming p's streams.
func (c *Client) resolveLocked(p *procIO, err error) {
	select {
	case <-p.resolved:
		return
	default:
	}
	p.startErr = err
	close(p.resolved)
	if c.procs[p.stdio.Stdio] == p {
		delete(c.procs, p.stdio.Stdio)
	}
	if err != nil {
		// The guest never opened them (or dropped them): nothing will arrive.
		p.main.Reset()
		if p.errS != nil {
			p.errS.Reset()
		}
		return
	}
	// End the directions the host never uses, so the guest can forget the streams once
	// the process is done. These are frame writes: not on the control reader goroutine.
	closeMain := p.stdin == nil || p.closeStdin
	go func() {
		if p.errS != nil {
			p.errS.CloseWrite()
		}
		if closeMain {
			p.main.CloseWrite()
		}
	}()
}

// stdinWriter holds writes back until the guest opened the stream.
type stdinWriter struct {
	c *Client
	p *procIO
}

func (w *stdinWriter) Write(b []byte) (int, error) {
	select {
	case <-w.p.resolved:
	case <-w.c.done:
		return 0, fmt.Errorf("write stdin: %w", w.c.Err())
	}
	if w.p.startErr != nil {
		return 0, fmt.Errorf("write stdin: %w", w.p.startErr)
	}
	return w.p.main.Write(b)
}

// Close sends EOF on stdin, at once or as soon as the guest opened the stream.
func (w *stdinWriter) Close() error {
	c := w.c
	c.mu.Lock()
	select {
	case <-w.p.resolved:
	default:
		w.p.closeStdin = true
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	if w.p.startErr != nil {
		return nil
	}
	return w.p.main.CloseWrite()
}

// outputReader notes when the consumer is finished with an output stream: read to EOF, or
// closed. That is the moment after which an exit may be reported.
type outputReader struct {
	s    *agentproto.Stream
	once sync.Once
	done chan struct{}
}

func newOutputReader(s *agentproto.Stream) *outputReader {
	return &outputReader{s: s, done: make(chan struct{})}
}

func (r *outputReader) Read(b []byte) (int, error) {
	n, err := r.s.Read(b)
	if err == io.EOF {
		r.once.Do(func() { close(r.done) })
	}
	return n, err
}

func (r *outputReader) Close() error {
	err := r.s.Close()
	r.once.Do(func() { close(r.done) })
	return err
}

// Process is a watched process: its streams and, once known, its exit.
type Process struct {
	c   *Client
	key procKey
	io  *procIO

	// Guarded by Client.mu.
	exited   chan struct{}
	exitSeen bool
	exit     agentproto.ProcessExit

	done   chan struct{} // closed when result/err are final
	result agentproto.ProcessExit
	err    error
}

// Watch registers interest in the exit of process in container, whose stdio is stdio (the
// streams are opened here unless OpenStreams already did). Call it before the command that
// creates the process, so the exit cannot be missed. If that command fails, Wait returns
// its error.
func (c *Client) Watch(container, process string, stdio agentproto.Stdio) (*Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, fmt.Errorf("watch %q/%q: %w", container, process, c.err)
	}
	key := procKey{container, process}
	if _, dup := c.watches[key]; dup {
		return nil, fmt.Errorf("pod %s: container %q process %q is already watched: %w", c.opts.PodID, container, process, ErrAlreadyExists)
	}
	pio := c.procs[stdio.Stdio]
	switch {
	case pio == nil:
		var err error
		if pio, err = c.openLocked(stdio); err != nil {
			return nil, fmt.Errorf("watch %q/%q: %w", container, process, err)
		}
	case pio.stdio != stdio:
		return nil, fmt.Errorf("pod %s: watch %q/%q: streams %+v were opened as %+v: %w", c.opts.PodID, container, process, stdio, pio.stdio, ErrInvalid)
	case pio.watched:
		return nil, fmt.Errorf("pod %s: watch %q/%q: streams %+v belong to another process: %w", c.opts.PodID, container, process, stdio, ErrAlreadyExists)
	}
	pio.watched = true
	p := &Process{c: c, key: key, io: pio, exited: make(chan struct{}), done: make(chan struct{})}
	c.watches[key] = p
	go p.watch()
	return p, nil
}

// Streams returns the process's stdio; absent ones are nil. They are the same values
// OpenStreams returned, if it was used.
func (p *Process) Streams() (stdin io.WriteCloser, stdout, stderr io.ReadCloser) {
	return p.io.streams()
}

// Done is closed once Wait returns without blocking.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait returns the process's exit once the guest reported it and the output streams were
// read to EOF (or closed). It fails if the command that creates the process failed, or the
// client failed first.
func (p *Process) Wait(ctx context.Context) (agentproto.ProcessExit, error) {
	select {
	case <-p.done:
		return p.result, p.err
	default:
	}
	select {
	case <-p.done:
		return p.result, p.err
	case <-p.c.done:
		// An exit completed just as the client failed still counts.
		select {
		case <-p.done:
			return p.result, p.err
		default:
		}
		return agentproto.ProcessExit{}, fmt.Errorf("wait for container %q process %q: %w", p.key.container, p.key.process, p.c.Err())
	case <-ctx.Done():
		return agentproto.ProcessExit{}, fmt.Errorf("pod %s: wait for container %q process %q: %w", p.c.opts.PodID, p.key.container, p.key.process, ctx.Err())
	}
}

// watch completes the Process: after the start was confirmed, the exit and the end of
// every output stream, in any order.
func (p *Process) watch() {
	c := p.c
	select {
	case <-p.io.resolved:
	case <-c.done:
		return
	}
	if err := p.io.startErr; err != nil {
		c.mu.Lock()
		p.err = fmt.Errorf("container %q process %q never started: %w", p.key.container, p.key.process, err)
		c.forgetLocked(p)
		close(p.done)
		c.mu.Unlock()
		return
	}
	waitFor := []<-chan struct{}{p.exited, p.io.stdout.done}
	if p.io.stderr != nil {
		waitFor = append(waitFor, p.io.stderr.done)
	}
	for _, ch := range waitFor {
		select {
		case <-ch:
		case <-c.done:
			return
		}
	}
	c.mu.Lock()
	p.result = p.exit
	c.forgetLocked(p)
	if c.exitsCh != nil {
		c.exitq = append(c.exitq, p.result)
		select {
		case c.exitKick <- struct{}{}:
		default:
		}
	}
	close(p.done)
	c.mu.Unlock()
	// Nobody can feed a finished process: end stdin so the guest forgets the stream, and
	// unblock a writer still waiting for credit.
	p.io.main.CloseWrite()
}

func (c *Client) forgetLocked(p *Process) {
	if c.watches[p.key] == p {
		delete(c.watches, p.key)
	}
}

// Exits delivers the exits of watched processes, each once its output ended, in the order
// they completed. Only exits completed after the first call are delivered; call it before
// starting processes. The channel is closed when the client fails (after the exits already
// completed were delivered) or at once on Close; read it until then.
func (c *Client) Exits() <-chan agentproto.ProcessExit {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exitsCh == nil {
		c.exitsCh = make(chan agentproto.ProcessExit)
		go c.forwardExits(c.exitsCh)
	}
	return c.exitsCh
}

func (c *Client) forwardExits(ch chan<- agentproto.ProcessExit) {
	defer close(ch)
	for {
		c.mu.Lock()
		if len(c.exitq) > 0 {
			e := c.exitq[0]
			c.exitq = c.exitq[1:]
			c.mu.Unlock()
			select {
			case ch <- e:
			case <-c.closed:
				return
			}
			continue
		}
		failed := c.err != nil
		c.mu.Unlock()
		if failed {
			return
		}
		select {
		case <-c.exitKick:
		case <-c.done:
		}
	}
}
