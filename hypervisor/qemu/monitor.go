package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// errMonitorClosed is returned by commands on a monitor that was closed (QEMU exited, or a
// command was abandoned at its deadline).
var errMonitorClosed = errors.New("qmp connection closed")

// monitor is a QMP connection (go-qemu) whose commands honour a context. go-qemu's Run has
// no deadline; the only way to abandon a command is to close the connection, so a command
// that outlives its context closes the monitor for good. Callers fall back to signals then.
type monitor struct {
	mon       *qmp.SocketMonitor
	closeOnce sync.Once
	closed    chan struct{}
}

// dialMonitor connects to QMP at path and completes the capabilities handshake. It polls
// until the socket accepts (QEMU creates it 20-30 ms after starting, once initialised) and
// gives up when ctx ends or QEMU exits. On a deadline it kills QEMU: that is the only way to
// abort go-qemu's handshake, and a QEMU that does not answer in time is of no use.
func dialMonitor(ctx context.Context, path string, p *process) (*monitor, error) {
	// A template clone's guest starts only once its state is loaded over QMP, so the poll's
	// granularity is on the clone's path (5 ms cost it 2.5 ms on average); a refused dial
	// costs a few microseconds.
	const poll = time.Millisecond
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var sm *qmp.SocketMonitor
	for {
		var err error
		if sm, err = qmp.NewSocketMonitor("unix", path, time.Second); err == nil {
			break
		}
		select {
		case <-tick.C:
		case <-p.done:
			return nil, errExitedEarly
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp socket %s did not accept (last error: %v): %w", path, err, ctx.Err())
		}
	}
	res := make(chan error, 1)
	go func() { res <- sm.Connect() }()
	var err error
	select {
	case err = <-res:
	case <-p.done:
		<-res
		sm.Disconnect()
		return nil, errExitedEarly
	case <-ctx.Done():
		p.kill()
		<-res
		sm.Disconnect()
		return nil, fmt.Errorf("qmp handshake: no answer: %w", ctx.Err())
	}
	if err != nil {
		sm.Disconnect()
		if p.hasExited() {
			return nil, errExitedEarly
		}
		return nil, fmt.Errorf("qmp handshake: %w", err)
	}
	return &monitor{mon: sm, closed: make(chan struct{})}, nil
}

// errExitedEarly tells the launch that QEMU went away while we waited for it.
var errExitedEarly = errors.New("qemu exited")

// run executes a QMP command and decodes its "return" into out (if not nil).
func (m *monitor) run(ctx context.Context, command string, args, out any) error {
	select {
	case <-m.closed:
		return fmt.Errorf("qmp %s: %w", command, errMonitorClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	b, err := json.Marshal(qmp.Command{Execute: command, Args: args})
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	type result struct {
		raw []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		raw, err := m.mon.Run(b)
		ch <- result{raw, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		m.close()
		<-ch
		return fmt.Errorf("qmp %s: no answer: %w", command, ctx.Err())
	}
	if r.err != nil {
		select {
		case <-m.closed:
			return fmt.Errorf("qmp %s: %w", command, errMonitorClosed)
		default:
		}
		return fmt.Errorf("qmp %s: %w", command, r.err)
	}
	if out == nil {
		return nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(r.raw, &resp); err != nil {
		return fmt.Errorf("qmp %s: decode answer: %w", command, err)
	}
	if err := json.Unmarshal(resp.Return, out); err != nil {
		return fmt.Errorf("qmp %s: decode answer %s: %w", command, resp.Return, err)
	}
	return nil
}

// close drops the connection; commands in flight return errMonitorClosed.
func (m *monitor) close() {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.mon.Disconnect()
	})
}

// status is query-status's answer.
type status struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

func (m *monitor) status(ctx context.Context) (status, error) {
	var s status
	err := m.run(ctx, "query-status", nil, &s)
	return s, err
}
