package agentclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/leakcheck"
	"github.com/runv-project/runv/internal/testbuf"
)

const testTimeout = 20 * time.Second

// fakeGuest is the guest end of both channels, driven by the test: raw control frames and
// a real stream mux (the mux is tested on its own in agentproto).
type fakeGuest struct {
	t      *testing.T
	ctl    net.Conn
	mux    *agentproto.Mux
	frames chan agentproto.ControlFrame
	wmu    sync.Mutex
}

func newPair(t *testing.T) (*Client, *fakeGuest) {
	t.Helper()
	return newPairWith(t, Options{Logf: t.Logf, PodID: "pod1"})
}

func newPairWith(t *testing.T, opts Options) (*Client, *fakeGuest) {
	t.Helper()
	leakcheck.Goroutines(t)
	ctlH, ctlG := net.Pipe()
	stH, stG := net.Pipe()
	c := New(&hypervisor.Channels{Control: ctlH, Stream: stH}, opts)
	g := &fakeGuest{t: t, ctl: ctlG, mux: agentproto.NewMux(stG, t.Logf), frames: make(chan agentproto.ControlFrame, 256)}
	go func() {
		defer close(g.frames)
		for {
			f, err := agentproto.ReadControl(ctlG)
			if err != nil {
				return
			}
			g.frames <- f
		}
	}()
	t.Cleanup(func() {
		c.Close()
		g.ctl.Close()
		g.mux.Close()
	})
	return c, g
}

func (g *fakeGuest) send(f agentproto.ControlFrame) {
	g.t.Helper()
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if err := agentproto.WriteControl(g.ctl, f); err != nil {
		g.t.Errorf("guest send %s: %v", f.Type, err)
	}
}

func (g *fakeGuest) sendRaw(b []byte) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	g.ctl.Write(b) // may fail once the host hung up: that is what the tests provoke
}

func (g *fakeGuest) ack(id uint64, data any) {
	g.t.Helper()
	f, err := agentproto.Marshal(agentproto.MsgAck, id, data)
	if err != nil {
		g.t.Fatal(err)
	}
	g.send(f)
}

func (g *fakeGuest) fail(id uint64, kind, msg string) {
	g.send(agentproto.ControlFrame{Type: agentproto.MsgError, ID: id, Error: &agentproto.RemoteError{Kind: kind, Message: msg}})
}

func (g *fakeGuest) exit(e agentproto.ProcessExit) {
	g.t.Helper()
	f, err := agentproto.Marshal(agentproto.MsgProcessExit, 0, e)
	if err != nil {
		g.t.Fatal(err)
	}
	g.send(f)
}

// expect returns the next command the host sent, which must be of type t.
func (g *fakeGuest) expect(t agentproto.MsgType) agentproto.ControlFrame {
	g.t.Helper()
	select {
	case f, ok := <-g.frames:
		if !ok {
			g.t.Fatalf("control channel closed while expecting %s", t)
		}
		if f.Type != t {
			g.t.Fatalf("guest got %s, want %s", f.Type, t)
		}
		if f.ID == 0 {
			g.t.Fatalf("%s without an id", f.Type)
		}
		return f
	case <-time.After(testTimeout):
		g.t.Fatalf("timed out waiting for %s", t)
	}
	panic("unreachable")
}

// callAsync runs Call in the background.
func callAsync(c *Client, ctx context.Context, t agentproto.MsgType, payload, reply any) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- c.Call(ctx, t, payload, reply) }()
	return ch
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
	panic("unreachable")
}

func TestHandshake(t *testing.T) {
	cases := []struct {
		name        string
		ready       bool // cold boot: READY first
		lateReady   bool // a READY after the handshake (clone, agent reconnect)
		version     int
		wantErr     error
		wantMessage string
	}{
		{name: "cold boot", ready: true, version: agentproto.Version},
		{name: "clone without READY", lateReady: true, version: agentproto.Version},
		{name: "mismatch", ready: true, version: agentproto.Version + 1, wantErr: ErrVersionMismatch,
			wantMessage: fmt.Sprintf("guest agent speaks protocol version %d, this runv speaks %d: rebuild and reinstall the initrd (make initrd install)", agentproto.Version+1, agentproto.Version)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, g := newPair(t)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if tc.ready {
				go g.send(agentproto.ControlFrame{Type: agentproto.MsgReady})
				if _, err := c.WaitReady(ctx); err != nil {
					t.Fatal(err)
				}
			}
			type result struct {
				v   agentproto.VersionInfo
				err error
			}
			res := make(chan result, 1)
			go func() { v, err := c.Handshake(ctx); res <- result{v, err} }()
			f := g.expect(agentproto.MsgGetVersion)
			g.ack(f.ID, agentproto.VersionInfo{Version: tc.version, Agent: "fake"})
			r := wait(t, res, "handshake")
			if tc.wantErr != nil {
				if !errors.Is(r.err, tc.wantErr) || !strings.Contains(r.err.Error(), tc.wantMessage) {
					t.Fatalf("handshake error %v, want %v with %q", r.err, tc.wantErr, tc.wantMessage)
				}
				return
			}
			if r.err != nil || r.v.Agent != "fake" {
				t.Fatalf("handshake: %+v, %v", r.v, r.err)
			}
			if tc.lateReady {
				g.send(agentproto.ControlFrame{Type: agentproto.MsgReady})
			}
			// The client still works: a late READY is no protocol error.
			done := callAsync(c, ctx, agentproto.MsgPing, nil, nil)
			g.ack(g.expect(agentproto.MsgPing).ID, nil)
			if err := wait(t, done, "ping"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReadyPayload: READY's payload (the agent's boot steps) is optional, and one that is
// not a Ready is a protocol error like any other frame's.
func TestReadyPayload(t *testing.T) {
	cases := []struct {
		name      string
		data      string
		wantSteps string
		wantErr   error
	}{
		{"none (an agent reconnecting)", "", "", nil},
		{"empty", `{}`, "", nil},
		{"boot steps", `{"bootSteps":"main at 0.3552 s, then root 13.1ms, lo 9.6ms"}`, "main at 0.3552 s, then root 13.1ms, lo 9.6ms", nil},
		{"not an object", `["lo 9.6ms"]`, "", agentproto.ErrProtocol},
		{"steps of the wrong type", `{"bootSteps":7}`, "", agentproto.ErrProtocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, g := newPair(t)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			f := agentproto.ControlFrame{Type: agentproto.MsgReady}
			if tc.data != "" {
				f.Data = json.RawMessage(tc.data)
			}
			go g.send(f)
			r, err := c.WaitReady(ctx)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("WaitReady: %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || r.BootSteps != tc.wantSteps {
				t.Fatalf("WaitReady: %+v, %v; want boot steps %q", r, err, tc.wantSteps)
			}
		})
	}
}

func TestWaitReadyFailsWithTheVM(t *testing.T) {
	c, g := newPair(t)
	res := make(chan error, 1)
	go func() { _, err := c.WaitReady(context.Background()); res <- err }()
	g.ctl.Close()
	if err := wait(t, res, "WaitReady"); !errors.Is(err, hypervisor.ErrVMExited) {
		t.Fatalf("WaitReady: %v, want ErrVMExited", err)
	}
}

func TestConcurrentCallsAnsweredOutOfOrder(t *testing.T) {
	c, g := newPair(t)
	const n = 32
	type result struct {
		i     int
		stats agentproto.Stats
		err   error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			var s agentproto.Stats
			err := c.Call(context.Background(), agentproto.MsgStats, agentproto.ContainerRef{Container: fmt.Sprint(i)}, &s)
			results <- result{i, s, err}
		}()
	}
	var cmds []agentproto.ControlFrame
	for range n {
		cmds = append(cmds, g.expect(agentproto.MsgStats))
	}
	// Answer in reverse order, each with a value derived from its own request.
	for i := len(cmds) - 1; i >= 0; i-- {
		var ref agentproto.ContainerRef
		if err := cmds[i].Unmarshal(&ref); err != nil {
			t.Fatal(err)
		}
		var k uint64
		fmt.Sscan(ref.Container, &k)
		g.ack(cmds[i].ID, agentproto.Stats{Pids: k})
	}
	for range n {
		r := wait(t, results, "call")
		if r.err != nil || r.stats.Pids != uint64(r.i) {
			t.Errorf("call %d got %+v, %v", r.i, r.stats, r.err)
		}
	}
}

func TestErrorKinds(t *testing.T) {
	cases := []struct {
		kind string
		want error
	}{
		{agentproto.KindNotFound, ErrNotFound},
		{agentproto.KindAlreadyExists, ErrAlreadyExists},
		{agentproto.KindInvalid, ErrInvalid},
		{agentproto.KindState, ErrFailedPrecondition},
		{agentproto.KindNotExecutable, ErrNotExecutable},
		{"some-future-kind", nil},
	}
	c, g := newPair(t)
	classes := []error{ErrNotFound, ErrAlreadyExists, ErrInvalid, ErrFailedPrecondition, ErrNotExecutable}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			done := callAsync(c, context.Background(), agentproto.MsgRemoveContainer, agentproto.ContainerRef{Container: "c1"}, nil)
			g.fail(g.expect(agentproto.MsgRemoveContainer).ID, tc.kind, "container c1: boom")
			err := wait(t, done, "call")
			var remote *agentproto.RemoteError
			if !errors.As(err, &remote) || remote.Kind != tc.kind || !strings.Contains(err.Error(), "container c1: boom") {
				t.Fatalf("error %v does not carry the remote error", err)
			}
			for _, class := range classes {
				if got := errors.Is(err, class); got != (class == tc.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, class, got)
				}
			}
		})
	}
	// An ERROR is an answer, not a failure of the client.
	if err := c.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestProtocolErrorsFailTheClient(t *testing.T) {
	header := func(typ agentproto.MsgType, n uint32) []byte {
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, uint32(typ))
		binary.BigEndian.PutUint32(b[4:], n)
		return b
	}
	frame := func(f agentproto.ControlFrame) []byte {
		var b bytes.Buffer
		agentproto.WriteControl(&b, f)
		return b.Bytes()
	}
	cases := []struct {
		name  string
		bytes func(pendingID uint64) []byte
	}{
		{"ACK for unknown id", func(id uint64) []byte { return frame(agentproto.ControlFrame{Type: agentproto.MsgAck, ID: id + 100}) }},
		{"ACK for id 0", func(uint64) []byte { return frame(agentproto.ControlFrame{Type: agentproto.MsgAck}) }},
		{"ERROR without error", func(id uint64) []byte {
			return append(header(agentproto.MsgError, uint32(8+len(fmt.Sprintf(`{"id":%d}`, id)))), fmt.Sprintf(`{"id":%d}`, id)...)
		}},
		{"oversized frame", func(uint64) []byte { return header(agentproto.MsgAck, 0xffffffff) }},
		{"garbage body", func(uint64) []byte { return append(header(agentproto.MsgAck, 12), "{{{{"...) }},
		{"host command from guest", func(uint64) []byte { return frame(agentproto.ControlFrame{Type: agentproto.MsgStartPod}) }},
		{"bad PROCESSEXIT", func(uint64) []byte {
			return frame(agentproto.ControlFrame{Type: agentproto.MsgProcessExit, Data: json.RawMessage(`"not an object"`)})
		}},
		{"reply that does not decode", func(id uint64) []byte {
			return frame(agentproto.ControlFrame{Type: agentproto.MsgAck, ID: id, Data: json.RawMessage(`[1,2]`)})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, g := newPair(t)
			var stats agentproto.Stats
			done := callAsync(c, context.Background(), agentproto.MsgStats, agentproto.ContainerRef{Container: "c"}, &stats)
			f := g.expect(agentproto.MsgStats)
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			go g.sendRaw(tc.bytes(f.ID))
			if err := wait(t, done, "pending call"); !errors.Is(err, agentproto.ErrProtocol) {
				t.Fatalf("pending call: %v, want ErrProtocol", err)
			}
			wait(t, c.Done(), "client to fail")
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
				t.Errorf("client allocated %d bytes on bad input", grew)
			}
			if !errors.Is(c.Err(), agentproto.ErrProtocol) {
				t.Fatalf("Err() = %v", c.Err())
			}
			if err := c.Call(context.Background(), agentproto.MsgPing, nil, nil); !errors.Is(err, agentproto.ErrProtocol) {
				t.Fatalf("later call: %v, want ErrProtocol", err)
			}
		})
	}
}

func TestGuestClosingFailsPendingCalls(t *testing.T) {
	for _, channel := range []string{"control", "stream"} {
		t.Run(channel, func(t *testing.T) {
			c, g := newPair(t)
			w, err := c.Watch("c1", agentproto.InitProcessID, agentproto.Stdio{Stdio: c.NextSeq(), Stderr: c.NextSeq()})
			if err != nil {
				t.Fatal(err)
			}
			done := callAsync(c, context.Background(), agentproto.MsgPing, nil, nil)
			g.expect(agentproto.MsgPing)
			if channel == "control" {
				g.ctl.Close()
			} else {
				g.mux.Close()
			}
			if err := wait(t, done, "pending call"); !errors.Is(err, hypervisor.ErrVMExited) {
				t.Fatalf("pending call: %v, want ErrVMExited", err)
			}
			if _, err := w.Wait(context.Background()); !errors.Is(err, hypervisor.ErrVMExited) {
				t.Fatalf("Wait: %v, want ErrVMExited", err)
			}
			if err := c.Call(context.Background(), agentproto.MsgPing, nil, nil); !errors.Is(err, hypervisor.ErrVMExited) {
				t.Fatalf("later call: %v", err)
			}
		})
	}
}

func TestCallContextAbandon(t *testing.T) {
	c, g := newPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := callAsync(c, ctx, agentproto.MsgPing, nil, nil)
	f := g.expect(agentproto.MsgPing)
	cancel()
	if err := wait(t, done, "cancelled call"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	// The late answer to a command the guest did receive is not a protocol error.
	g.ack(f.ID, nil)
	next := callAsync(c, context.Background(), agentproto.MsgPing, nil, nil)
	g.ack(g.expect(agentproto.MsgPing).ID, nil)
	if err := wait(t, next, "next call"); err != nil {
		t.Fatal(err)
	}
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
}

// A command the agent is slow to answer is reported while it waits, again every SlowAfter,
// and its late answer is logged; one answered in time is not reported.
func TestSlowCallIsReported(t *testing.T) {
	for _, tc := range []struct {
		name      string
		slowAfter time.Duration
		reports   int // reports to wait for before the guest answers
	}{
		{"answered late", 20 * time.Millisecond, 2},
		{"answered in time", testTimeout, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type report struct {
				typ    agentproto.MsgType
				waited time.Duration
			}
			reports := make(chan report, 64)
			var logs testbuf.Buffer
			c, g := newPairWith(t, Options{
				PodID: "pod1", SlowAfter: tc.slowAfter,
				Logf: func(format string, args ...any) { fmt.Fprintf(&logs, format+"\n", args...) },
				OnSlow: func(typ agentproto.MsgType, waited time.Duration) {
					select {
					case reports <- report{typ, waited}:
					default:
					}
				},
			})
			done := callAsync(c, context.Background(), agentproto.MsgPing, nil, nil)
			f := g.expect(agentproto.MsgPing)
			var last time.Duration
			for i := 0; i < tc.reports; i++ {
				select {
				case r := <-reports:
					if r.typ != agentproto.MsgPing || r.waited <= last {
						t.Fatalf("report %d: %s after %s (the one before: %s)", i, r.typ, r.waited, last)
					}
					last = r.waited
				case <-time.After(testTimeout):
					t.Fatalf("no report %d of the unanswered PING", i)
				}
			}
			g.ack(f.ID, nil)
			if err := wait(t, done, "ping"); err != nil {
				t.Fatal(err)
			}
			answered := strings.Contains(logs.String(), "pod pod1: the agent answered PING after")
			if late := tc.reports > 0; answered != late {
				t.Errorf("late answer logged = %v, want %v; log: %q", answered, late, logs.String())
			}
			if tc.reports == 0 && len(reports) != 0 {
				t.Errorf("a command answered in time was reported %d times", len(reports))
			}
		})
	}
}

func TestNotACommand(t *testing.T) {
	c, _ := newPair(t)
	for _, typ := range []agentproto.MsgType{agentproto.MsgAck, agentproto.MsgReady, agentproto.MsgProcessExit, 999} {
		if err := c.Call(context.Background(), typ, nil, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("Call(%s): %v, want ErrInvalid", typ, err)
		}
	}
}

// guestProcess is the guest's view of a process the host created.
type guestProcess struct {
	stdio, stderr *agentproto.Stream
}

// createProcess runs the host half of NEWCONTAINER against the fake guest, which opens its
// streams before it answers, as the real agent must.
func createProcess(t *testing.T, c *Client, g *fakeGuest, id string, terminal bool, noStdin bool) (*Process, guestProcess) {
	t.Helper()
	io := agentproto.Stdio{Stdio: c.NextSeq(), NoStdin: noStdin}
	if !terminal {
		io.Stderr = c.NextSeq()
	}
	p, err := c.Watch(id, agentproto.InitProcessID, io)
	if err != nil {
		t.Fatal(err)
	}
	var started agentproto.ProcessStarted
	done := callAsync(c, context.Background(), agentproto.MsgNewContainer, agentproto.Container{ID: id, IO: io}, &started)
	f := g.expect(agentproto.MsgNewContainer)
	var ctr agentproto.Container
	if err := f.Unmarshal(&ctr); err != nil {
		t.Fatal(err)
	}
	var gp guestProcess
	if gp.stdio, err = g.mux.Open(ctr.IO.Stdio); err != nil {
		t.Fatal(err)
	}
	if ctr.IO.Stderr != 0 {
		if gp.stderr, err = g.mux.Open(ctr.IO.Stderr); err != nil {
			t.Fatal(err)
		}
	}
	g.ack(f.ID, agentproto.ProcessStarted{Pid: 42})
	if err := wait(t, done, "NEWCONTAINER"); err != nil || started.Pid != 42 {
		t.Fatalf("NEWCONTAINER: %+v, %v", started, err)
	}
	return p, gp
}

// sync waits until the host processed every control frame the guest sent so far: the
// control channel is handled in order.
func (g *fakeGuest) sync(c *Client) {
	g.t.Helper()
	done := callAsync(c, context.Background(), agentproto.MsgPing, nil, nil)
	g.ack(g.expect(agentproto.MsgPing).ID, nil)
	if err := wait(g.t, done, "sync ping"); err != nil {
		g.t.Fatal(err)
	}
}

func TestExitReportedOnlyAfterOutputEOF(t *testing.T) {
	for _, terminal := range []bool{false, true} {
		t.Run(fmt.Sprintf("terminal=%v", terminal), func(t *testing.T) {
			c, g := newPair(t)
			exits := c.Exits()
			p, gp := createProcess(t, c, g, "c1", terminal, true)
			_, stdout, stderr := p.Streams()
			if (stderr == nil) != terminal {
				t.Fatalf("stderr = %v for terminal=%v", stderr, terminal)
			}
			var out, errOut testbuf.Buffer
			copied := make(chan error, 2)
			go func() { _, err := io.Copy(&out, stdout); copied <- err }()
			if stderr != nil {
				go func() { _, err := io.Copy(&errOut, stderr); copied <- err }()
			}

			if _, err := gp.stdio.Write([]byte("first ")); err != nil {
				t.Fatal(err)
			}
			// PROCESSEXIT overtakes the output: the control channel is faster.
			want := agentproto.ProcessExit{Container: "c1", Process: agentproto.InitProcessID, ExitCode: 3}
			g.exit(want)
			g.sync(c)
			select {
			case <-p.Done():
				t.Fatal("exit reported before the output reached EOF")
			default:
			}
			tail := bytes.Repeat([]byte("tail "), 200_000) // several windows
			if _, err := gp.stdio.Write(tail); err != nil {
				t.Fatal(err)
			}
			gp.stdio.CloseWrite()
			if gp.stderr != nil {
				select {
				case <-p.Done():
					t.Fatal("exit reported before stderr reached EOF")
				default:
				}
				gp.stderr.Write([]byte("oops"))
				gp.stderr.CloseWrite()
			}
			got, err := p.Wait(context.Background())
			if err != nil || got != want {
				t.Fatalf("Wait: %+v, %v; want %+v", got, err, want)
			}
			// Everything was read by the time the exit was reported.
			if o := out.String(); o != "first "+string(tail) {
				t.Fatalf("stdout at exit: %d bytes, want %d", len(o), len("first ")+len(tail))
			}
			if !terminal && errOut.String() != "oops" {
				t.Fatalf("stderr at exit: %q", errOut.String())
			}
			if e := wait(t, exits, "Exits()"); e != want {
				t.Fatalf("Exits() delivered %+v", e)
			}
			// The host ended stdin for the finished process, so the guest can forget it.
			if b, err := io.ReadAll(gp.stdio); err != nil || len(b) != 0 {
				t.Fatalf("guest stdin after exit: %q, %v", b, err)
			}
			// A second watch for the same name works once the first completed.
			if _, err := c.Watch("c1", agentproto.InitProcessID, agentproto.Stdio{Stdio: c.NextSeq()}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestExitWaitsForClosedOutput(t *testing.T) {
	c, g := newPair(t)
	p, gp := createProcess(t, c, g, "c1", false, true)
	_, stdout, stderr := p.Streams()
	// A consumer that does not care closes the streams: output is discarded, not blocked on.
	stdout.Close()
	stderr.Close()
	if _, err := gp.stdio.Write(bytes.Repeat([]byte{'x'}, 4*agentproto.InitialWindow)); err != nil {
		t.Fatal(err)
	}
	gp.stdio.CloseWrite()
	gp.stderr.CloseWrite()
	g.exit(agentproto.ProcessExit{Container: "c1", Process: agentproto.InitProcessID, ExitCode: 0})
	if _, err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestStdinHeldUntilTheGuestOpenedTheStream(t *testing.T) {
	c, g := newPair(t)
	io_ := agentproto.Stdio{Stdio: c.NextSeq(), Stderr: c.NextSeq()}
	stdin, _, _, err := c.OpenStreams(io_)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Watch("c1", "exec1", io_)
	if err != nil {
		t.Fatal(err)
	}
	if in, _, _ := p.Streams(); in != stdin {
		t.Fatal("Watch did not adopt the streams OpenStreams opened")
	}
	// Written and closed before the guest even saw the command: must arrive anyway.
	wrote := make(chan error, 1)
	go func() {
		_, err := stdin.Write([]byte("early input"))
		if err == nil {
			err = stdin.Close()
		}
		wrote <- err
	}()
	done := callAsync(c, context.Background(), agentproto.MsgExecCmd, &agentproto.ExecProcess{Container: "c1", ID: "exec1", IO: io_}, nil)
	f := g.expect(agentproto.MsgExecCmd)
	gin, err := g.mux.Open(io_.Stdio)
	if err != nil {
		t.Fatal(err)
	}
	gerr, err := g.mux.Open(io_.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	g.ack(f.ID, agentproto.ProcessStarted{Pid: 7})
	if err := wait(t, done, "EXECCMD"); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(gin); err != nil || string(b) != "early input" {
		t.Fatalf("guest stdin: %q, %v", b, err)
	}
	if err := wait(t, wrote, "stdin writer"); err != nil {
		t.Fatal(err)
	}
	// The host never writes to stderr, and says so.
	if b, err := io.ReadAll(gerr); err != nil || len(b) != 0 {
		t.Fatalf("guest side of stderr: %q, %v", b, err)
	}
	if err := g.mux.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestStartFailureFailsStreamsAndWatch(t *testing.T) {
	c, g := newPair(t)
	io_ := agentproto.Stdio{Stdio: c.NextSeq(), Stderr: c.NextSeq()}
	p, err := c.Watch("c1", "exec1", io_)
	if err != nil {
		t.Fatal(err)
	}
	stdin, stdout, _ := p.Streams()
	done := callAsync(c, context.Background(), agentproto.MsgExecCmd, agentproto.ExecProcess{Container: "c1", ID: "exec1", IO: io_}, nil)
	g.fail(g.expect(agentproto.MsgExecCmd).ID, agentproto.KindNotExecutable, `exec: "nope": executable file not found in $PATH`)
	if err := wait(t, done, "EXECCMD"); !errors.Is(err, ErrNotExecutable) {
		t.Fatalf("EXECCMD: %v", err)
	}
	if _, err := p.Wait(context.Background()); !errors.Is(err, ErrNotExecutable) || !strings.Contains(err.Error(), "never started") {
		t.Fatalf("Wait: %v", err)
	}
	if _, err := stdin.Write([]byte("x")); !errors.Is(err, ErrNotExecutable) {
		t.Fatalf("stdin write: %v", err)
	}
	if _, err := stdout.Read(make([]byte, 1)); !errors.Is(err, agentproto.ErrStreamClosed) {
		t.Fatalf("stdout read: %v", err)
	}
	// The name is free again, the client is fine.
	if _, err := c.Watch("c1", "exec1", agentproto.Stdio{Stdio: c.NextSeq()}); err != nil {
		t.Fatal(err)
	}
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
}

func TestWatchErrors(t *testing.T) {
	c, g := newPair(t)
	io_ := agentproto.Stdio{Stdio: c.NextSeq()}
	if _, err := c.Watch("c1", "p", io_); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Watch("c1", "p", agentproto.Stdio{Stdio: c.NextSeq()}); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("duplicate watch: %v", err)
	}
	if _, err := c.Watch("c1", "q", io_); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("streams of another process: %v", err)
	}
	if _, err := c.Watch("c1", "r", agentproto.Stdio{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("no stdio seq: %v", err)
	}
	// Exits of processes nobody watches are ignored, a repeated exit is a protocol error.
	g.exit(agentproto.ProcessExit{Container: "other", Process: "x"})
	g.sync(c)
	g.exit(agentproto.ProcessExit{Container: "c1", Process: "p"})
	g.exit(agentproto.ProcessExit{Container: "c1", Process: "p"})
	wait(t, c.Done(), "client to fail")
	if !errors.Is(c.Err(), agentproto.ErrProtocol) {
		t.Fatalf("Err() = %v", c.Err())
	}
}

func TestCloseFailsEverything(t *testing.T) {
	c, g := newPair(t)
	exits := c.Exits()
	p, _ := createProcess(t, c, g, "c1", false, false)
	done := callAsync(c, context.Background(), agentproto.MsgPing, nil, nil)
	g.expect(agentproto.MsgPing)
	c.Close()
	if err := wait(t, done, "pending call"); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending call: %v", err)
	}
	if _, err := p.Wait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait: %v", err)
	}
	if _, ok := <-exits; ok {
		t.Fatal("Exits() not closed")
	}
	wait(t, g.mux.Done(), "guest mux to see the host go")
}
