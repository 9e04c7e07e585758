package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
)

// errMonitorClosed is returned by commands on a monitor that was closed (QEMU exited, or a
// command was abandoned at its deadline).
var errMonitorClosed = errors.New("qmp connection closed")

// maxQMPLine bounds one message from QEMU. A QEMU whose guest broke out is the attacker's
// process: a line without end must not grow the launcher's memory without end.
const maxQMPLine = 1 << 20

// monitor is a QMP connection whose commands honour a context. QMP answers commands in the
// order they were written, so several can be written at once and their answers read in
// turn (batch): a clone's launch writes its commands together with the handshake, before
// QEMU has even greeted, instead of one round trip each. A command that outlives its
// context closes the monitor for good (its answer would be taken for the next command's);
// callers fall back to signals then.
type monitor struct {
	conn net.Conn
	// exited is QEMU's process ending: a handshake waits on it as well as on the greeting.
	exited <-chan struct{}
	// replies carries the greeting and the commands' answers, in order (read).
	replies chan []byte
	// cmdMu makes one batch at a time write its commands and take their answers.
	cmdMu     sync.Mutex
	closeOnce sync.Once
	closed    chan struct{}

	// watchMu guards watcher, where read delivers QEMU's events while someone waits on
	// them (watch); without a watcher they are dropped.
	watchMu sync.Mutex
	watcher chan qmpEvent
}

// qmpEvent is an asynchronous message from QEMU ({"event": ..., "data": ...}).
type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// qmpCall is one command of a batch; out (if not nil) receives its "return".
type qmpCall struct {
	command string
	args    any
	out     any
}

// newMonitor reads QMP from conn, a connection to QEMU's monitor socket that may have been
// made before QEMU accepts it (the socket is runv's: vmsockets.go); QEMU answers it once it
// is initialised. exited is QEMU's process ending.
func newMonitor(conn net.Conn, exited <-chan struct{}) *monitor {
	m := &monitor{conn: conn, exited: exited, replies: make(chan []byte), closed: make(chan struct{})}
	go m.read()
	return m
}

// read splits QEMU's messages into answers (in order, to the command waiting for them) and
// events, until the connection ends; then it closes the monitor, so that a command in
// flight fails instead of waiting for an answer that will not come.
func (m *monitor) read() {
	defer m.close()
	sc := bufio.NewScanner(m.conn)
	sc.Buffer(make([]byte, 4096), maxQMPLine)
	for sc.Scan() {
		var ev qmpEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // not a message; the command waiting gets the next one, or its deadline
		}
		if ev.Event != "" {
			m.deliver(ev)
			continue
		}
		select {
		case m.replies <- append([]byte(nil), sc.Bytes()...):
		case <-m.closed:
			return
		}
	}
}

func (m *monitor) deliver(ev qmpEvent) {
	m.watchMu.Lock()
	defer m.watchMu.Unlock()
	if m.watcher == nil {
		return
	}
	select {
	case m.watcher <- ev:
	default: // a watcher that does not keep up misses events; it still has its deadline
	}
}

// watch delivers QEMU's events from now on to the returned channel, until stop is called.
// One watcher at a time: a launch step waiting for its command's outcome.
func (m *monitor) watch() (events <-chan qmpEvent, stop func()) {
	ch := make(chan qmpEvent, 16)
	m.watchMu.Lock()
	m.watcher = ch
	m.watchMu.Unlock()
	return ch, func() {
		m.watchMu.Lock()
		m.watcher = nil
		m.watchMu.Unlock()
	}
}

// handshake takes QEMU's greeting and negotiates capabilities, with the calls written
// at once after qmp_capabilities (none: the handshake alone). It waits until QEMU answers,
// exits, or ctx ends.
func (m *monitor) handshake(ctx context.Context, calls ...qmpCall) error {
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	all := append([]qmpCall{{command: "qmp_capabilities"}}, calls...)
	err := m.batch(ctx, all, func(ctx context.Context) error {
		raw, err := m.reply(ctx, "greeting")
		if err != nil {
			return err
		}
		if json.Unmarshal(raw, &greeting) != nil || greeting.QMP == nil {
			return fmt.Errorf("qmp handshake: not a greeting: %.200q", raw)
		}
		return nil
	})
	if err != nil && errors.Is(err, errMonitorClosed) {
		select {
		case <-m.exited:
			return errExitedEarly
		default:
		}
	}
	return err
}

// errExitedEarly tells the launch that QEMU went away while we waited for it.
var errExitedEarly = errors.New("qemu exited")

// run executes a QMP command and decodes its "return" into out (if not nil).
func (m *monitor) run(ctx context.Context, command string, args, out any) error {
	return m.batch(ctx, []qmpCall{{command: command, args: args, out: out}}, nil)
}

// batch writes calls at once and then reads their answers in order (after first, if not
// nil, has read what QEMU sends before them). It fails with the first command that failed,
// after all answers are in: QEMU runs each command whatever the one before it answered.
func (m *monitor) batch(ctx context.Context, calls []qmpCall, first func(context.Context) error) error {
	m.cmdMu.Lock()
	defer m.cmdMu.Unlock()
	name := calls[0].command
	select {
	case <-m.closed:
		return fmt.Errorf("qmp %s: %w", name, errMonitorClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", name, err)
	}
	var msg []byte
	for _, c := range calls {
		b, err := json.Marshal(struct {
			Execute   string `json:"execute"`
			Arguments any    `json:"arguments,omitempty"`
		}{c.command, c.args})
		if err != nil {
			return fmt.Errorf("qmp %s: %w", c.command, err)
		}
		msg = append(append(msg, b...), '\n')
	}
	if _, err := m.conn.Write(msg); err != nil {
		m.close()
		return fmt.Errorf("qmp %s: %w: %w", name, errMonitorClosed, err)
	}
	if first != nil {
		if err := first(ctx); err != nil {
			return err
		}
	}
	var failed error
	for _, c := range calls {
		raw, err := m.reply(ctx, c.command)
		if err != nil {
			return err
		}
		if err := decodeAnswer(c, raw); err != nil && failed == nil {
			failed = err
		}
	}
	return failed
}

// reply waits for QEMU's next answer. One that does not come before ctx ends closes the
// monitor: it would otherwise be taken for the next command's.
func (m *monitor) reply(ctx context.Context, what string) ([]byte, error) {
	select {
	case raw := <-m.replies:
		return raw, nil
	case <-m.closed:
		return nil, fmt.Errorf("qmp %s: %w", what, errMonitorClosed)
	case <-m.exited:
		// QEMU's end closes the socket too, unless a descendant still holds it.
		m.close()
		return nil, fmt.Errorf("qmp %s: %w", what, errMonitorClosed)
	case <-ctx.Done():
		m.close()
		return nil, fmt.Errorf("qmp %s: no answer: %w", what, ctx.Err())
	}
}

func decodeAnswer(c qmpCall, raw []byte) error {
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("qmp %s: decode answer: %w", c.command, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("qmp %s: %s", c.command, resp.Error.Desc)
	}
	if c.out == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Return, c.out); err != nil {
		return fmt.Errorf("qmp %s: decode answer %.200s: %w", c.command, resp.Return, err)
	}
	return nil
}

// close drops the connection; commands in flight return errMonitorClosed.
func (m *monitor) close() {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.conn.Close()
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
