package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/runv-project/runv/api/agentproto"
)

// Handler runs one command. It returns the ACK's data (nil: no data) or an error that becomes
// the ERROR frame. A handler that must act after the host saw its ACK (start copying a
// process's output, power off) calls req.Ack itself and carries on; what it returns after
// that is only logged.
type Handler func(ctx context.Context, req *Request) (any, error)

// Dispatcher reads control frames and answers each command with exactly one ACK or ERROR
// carrying the command's id. Commands run concurrently, each in its own goroutine, so that a
// slow one (creating a container takes a few hundred ms under TCG) does not hold up a PING or
// a signal; the host orders dependent commands by waiting for their ACKs.
type Dispatcher struct {
	log *logger
	// route finds the handler of a command type (nil: unsupported).
	route func(agentproto.MsgType) Handler

	// wmu makes each frame one uninterrupted write: replies and events come from many
	// goroutines.
	wmu sync.Mutex
	w   io.Writer

	ctx     context.Context
	running sync.WaitGroup
}

// NewDispatcher writes its frames to w; route finds the handler of each command's type
// (nil from route: unsupported). ctx is handed to every handler. A switch finds the agent's
// handlers (Agent.handler): in a cold guest, every line of a registration function is code
// translated at boot, and a switch runs only the cases of the commands that come.
func NewDispatcher(ctx context.Context, w io.Writer, log *logger, route func(agentproto.MsgType) Handler) *Dispatcher {
	return &Dispatcher{ctx: ctx, w: w, log: log, route: route}
}

// Send writes one unsolicited frame (READY, PROCESSEXIT): id 0, payload may be nil. It
// blocks while the host side is disconnected, and resumes when it comes back.
func (d *Dispatcher) Send(t agentproto.MsgType, payload any) error {
	f, err := agentproto.Marshal(t, 0, payload)
	if err != nil {
		return err
	}
	return d.write(f)
}

func (d *Dispatcher) write(f agentproto.ControlFrame) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if err := agentproto.WriteControl(d.w, f); err != nil {
		return fmt.Errorf("write %s frame (id %d): %w", f.Type, f.ID, err)
	}
	if d.log.debugEnabled() { // abbrev's copy and Sprintf only when the line is printed
		d.log.Debugf("-> %s id=%d %s", f.Type, f.ID, abbrev(f.Data, f.Error))
	}
	return nil
}

// Serve reads and dispatches frames from r until reading fails. It returns the read error:
// errors.Is(err, agentproto.ErrProtocol) for a malformed frame (the connection can no
// longer be trusted to be in sync), otherwise the reader's own error. Handlers still running
// when Serve returns keep running and reply through the same writer.
func (d *Dispatcher) Serve(r io.Reader) error {
	for {
		f, err := agentproto.ReadControl(r)
		if err != nil {
			return err
		}
		switch {
		case !d.log.debugEnabled():
			// abbrev copies the payload and formats its length: ~100 translation blocks
			// of fmt in a template clone for a line that is not printed.
		case f.Type == agentproto.MsgStartPod:
			// Its payload carries the entropy the guest RNG is seeded with.
			d.log.Debugf("<- %s id=%d (payload not logged)", f.Type, f.ID)
		default:
			d.log.Debugf("<- %s id=%d %s", f.Type, f.ID, abbrev(f.Data, f.Error))
		}
		if f.ID == 0 {
			// Every command carries a non-zero id; without one no reply can name it, and a
			// host that sends one is out of step with this protocol.
			return fmt.Errorf("%w: %s frame without a command id", agentproto.ErrProtocol, f.Type)
		}
		req := &Request{Frame: f, d: d}
		h := d.route(f.Type)
		if h == nil {
			// Unknown or guest-to-host type: refuse it and carry on, a newer host may
			// probe for commands this agent does not have.
			d.reply(req, nil, errorf(agentproto.KindInvalid, "unsupported command %s", f.Type))
			continue
		}
		d.running.Add(1)
		go d.run(h, req)
	}
}

// Wait blocks until every handler started so far has returned (tests, shutdown).
func (d *Dispatcher) Wait() { d.running.Wait() }

func (d *Dispatcher) run(h Handler, req *Request) {
	defer d.running.Done()
	var (
		data any
		err  error
	)
	func() {
		// A bug in one handler must not take PID 1, and with it the VM, down.
		defer func() {
			if p := recover(); p != nil {
				d.log.Errorf("PANIC in %s handler (id %d): %v\n%s", req.Frame.Type, req.Frame.ID, p, debug.Stack())
				err = fmt.Errorf("agent bug: %s handler panicked: %v", req.Frame.Type, p)
			}
		}()
		data, err = h(d.ctx, req)
	}()
	d.reply(req, data, err)
}

// reply sends the command's ACK or ERROR unless the handler already acknowledged it.
func (d *Dispatcher) reply(req *Request, data any, err error) {
	if req.replied.Load() {
		if err != nil {
			d.log.Errorf("%s (id %d) failed after its ACK: %v", req.Frame.Type, req.Frame.ID, err)
		}
		return
	}
	if err != nil {
		d.log.Infof("%s (id %d) failed: %v", req.Frame.Type, req.Frame.ID, err)
		if werr := req.sendError(err); werr != nil {
			d.log.Errorf("reply to %s (id %d): %v", req.Frame.Type, req.Frame.ID, werr)
		}
		return
	}
	if werr := req.Ack(data); werr != nil {
		d.log.Errorf("reply to %s (id %d): %v", req.Frame.Type, req.Frame.ID, werr)
	}
}

// Request is one command being handled.
type Request struct {
	Frame   agentproto.ControlFrame
	d       *Dispatcher
	replied atomic.Bool
}

// Decode unmarshals the command's payload; a payload that does not fit is KindInvalid.
func (r *Request) Decode(v any) error {
	if err := r.Frame.Unmarshal(v); err != nil {
		return withKind(agentproto.KindInvalid, err)
	}
	return nil
}

// Ack replies ACK with data (nil: none). Only the first reply is sent.
func (r *Request) Ack(data any) error {
	if r.replied.Swap(true) {
		return errors.New("command already answered")
	}
	f, err := agentproto.Marshal(agentproto.MsgAck, r.Frame.ID, data)
	if err != nil {
		// The reply cannot be encoded: still answer, or the host waits forever.
		r.replied.Store(false)
		return r.sendError(err)
	}
	return r.d.write(f)
}

func (r *Request) sendError(err error) error {
	r.replied.Store(true)
	return r.d.write(agentproto.ControlFrame{Type: agentproto.MsgError, ID: r.Frame.ID, Error: remoteError(err)})
}

// abbrev renders a payload for debug logs, cut short: specs are long.
func abbrev(data []byte, rerr *agentproto.RemoteError) string {
	if rerr != nil {
		return fmt.Sprintf("error=%q kind=%q", rerr.Message, rerr.Kind)
	}
	const max = 200
	if len(data) > max {
		return string(data[:max]) + fmt.Sprintf("...(%d bytes)", len(data))
	}
	return string(data)
}
