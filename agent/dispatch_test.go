package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/api/agentproto"
)

// testLogger logs through t.Logf.
func testLogger(t *testing.T) *logger {
	t.Helper()
	l := newLogger(testWriter{t}, true)
	// Goroutines of a finished test may still log; t.Log would then race with the end of
	// the test.
	t.Cleanup(func() { l.setOutput(nil) })
	return l
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

// handlers are a test's handlers by command type (the agent's own are found by a switch:
// Agent.handler).
type handlers map[agentproto.MsgType]Handler

func (h handlers) route(t agentproto.MsgType) Handler { return h[t] }

// startDispatcher serves a dispatcher of handlers on one end of an in-memory pipe and
// returns the host end and a channel with Serve's result.
func startDispatcher(t *testing.T, hs handlers) (net.Conn, *Dispatcher, <-chan error) {
	t.Helper()
	host, guest := net.Pipe()
	d := NewDispatcher(context.Background(), guest, testLogger(t), hs.route)
	done := make(chan error, 1)
	go func() { done <- d.Serve(guest) }()
	t.Cleanup(func() {
		host.Close()
		guest.Close()
		d.Wait()
	})
	return host, d, done
}

func send(t *testing.T, w io.Writer, typ agentproto.MsgType, id uint64, payload any) {
	t.Helper()
	f, err := agentproto.Marshal(typ, id, payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := agentproto.WriteControl(w, f); err != nil {
		t.Fatalf("write %s: %v", typ, err)
	}
}

func recv(t *testing.T, r io.Reader) agentproto.ControlFrame {
	t.Helper()
	f, err := agentproto.ReadControl(r)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return f
}

func TestDispatcherAckCarriesCommandID(t *testing.T) {
	host, _, _ := startDispatcher(t, handlers{
		agentproto.MsgGetVersion: func(context.Context, *Request) (any, error) {
			return agentproto.VersionInfo{Version: agentproto.Version, Agent: "test"}, nil
		},
	})
	send(t, host, agentproto.MsgGetVersion, 42, nil)
	f := recv(t, host)
	if f.Type != agentproto.MsgAck || f.ID != 42 {
		t.Fatalf("got %s id %d, want ACK id 42", f.Type, f.ID)
	}
	var v agentproto.VersionInfo
	if err := f.Unmarshal(&v); err != nil || v.Version != agentproto.Version {
		t.Fatalf("version reply %+v, %v", v, err)
	}
}

func TestDispatcherUnknownTypeIsAnErrorNotFatal(t *testing.T) {
	host, _, done := startDispatcher(t, handlers{
		agentproto.MsgPing: func(context.Context, *Request) (any, error) { return nil, nil },
	})
	send(t, host, agentproto.MsgType(9999), 7, nil)
	f := recv(t, host)
	if f.Type != agentproto.MsgError || f.ID != 7 || f.Error.Kind != agentproto.KindInvalid {
		t.Fatalf("got %s id %d err %+v, want ERROR id 7 kind invalid", f.Type, f.ID, f.Error)
	}
	// A guest-to-host type sent by the host is just as unsupported.
	send(t, host, agentproto.MsgAck, 8, nil)
	if f := recv(t, host); f.Type != agentproto.MsgError || f.ID != 8 {
		t.Fatalf("got %s id %d, want ERROR id 8", f.Type, f.ID)
	}
	send(t, host, agentproto.MsgPing, 9, nil)
	if f := recv(t, host); f.Type != agentproto.MsgAck || f.ID != 9 {
		t.Fatalf("got %s id %d, want ACK id 9 after the unknown command", f.Type, f.ID)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v after an unknown command", err)
	default:
	}
}

func TestDispatcherErrorKinds(t *testing.T) {
	host, _, _ := startDispatcher(t, handlers{
		agentproto.MsgRemoveContainer: func(context.Context, *Request) (any, error) {
			return nil, errorf(agentproto.KindState, "container %q is not stopped", "c1")
		},
		agentproto.MsgStats: func(_ context.Context, req *Request) (any, error) {
			var ref agentproto.ContainerRef
			return nil, req.Decode(&ref)
		},
		agentproto.MsgPing: func(context.Context, *Request) (any, error) {
			return nil, errors.New("plain failure")
		},
	})
	send(t, host, agentproto.MsgRemoveContainer, 1, agentproto.ContainerRef{Container: "c1"})
	f := recv(t, host)
	if f.Type != agentproto.MsgError || f.ID != 1 || f.Error.Kind != agentproto.KindState || f.Error.Message != `container "c1" is not stopped` {
		t.Fatalf("got %s id %d %+v", f.Type, f.ID, f.Error)
	}
	// A payload of the wrong shape is the command's failure, not a broken connection.
	if err := agentproto.WriteControl(host, agentproto.ControlFrame{Type: agentproto.MsgStats, ID: 2, Data: []byte(`[1,2]`)}); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, host); f.Type != agentproto.MsgError || f.ID != 2 || f.Error.Kind != agentproto.KindInvalid {
		t.Fatalf("got %s id %d %+v, want ERROR invalid", f.Type, f.ID, f.Error)
	}
	send(t, host, agentproto.MsgPing, 3, nil)
	if f := recv(t, host); f.Type != agentproto.MsgError || f.Error.Kind != "" || f.Error.Message != "plain failure" {
		t.Fatalf("got %s %+v", f.Type, f.Error)
	}
}

func TestDispatcherEarlyAckRepliesOnce(t *testing.T) {
	after := make(chan struct{})
	host, _, _ := startDispatcher(t, handlers{
		agentproto.MsgExecCmd: func(_ context.Context, req *Request) (any, error) {
			if err := req.Ack(agentproto.ProcessStarted{Pid: 99}); err != nil {
				return nil, err
			}
			<-after
			// Too late to fail the command: logged only.
			return "ignored", errors.New("after the ack")
		},
		agentproto.MsgPing: func(context.Context, *Request) (any, error) { return nil, nil },
	})
	send(t, host, agentproto.MsgExecCmd, 5, agentproto.ExecProcess{ID: "e"})
	f := recv(t, host)
	var ps agentproto.ProcessStarted
	if f.Type != agentproto.MsgAck || f.ID != 5 || f.Unmarshal(&ps) != nil || ps.Pid != 99 {
		t.Fatalf("got %s id %d %s", f.Type, f.ID, f.Data)
	}
	close(after)
	send(t, host, agentproto.MsgPing, 6, nil)
	if f := recv(t, host); f.ID != 6 {
		t.Fatalf("got a second reply for id %d (%s), want only the PING's ACK", f.ID, f.Type)
	}
}

func TestDispatcherSlowCommandDoesNotBlockOthers(t *testing.T) {
	release := make(chan struct{})
	host, _, _ := startDispatcher(t, handlers{
		agentproto.MsgNewContainer: func(context.Context, *Request) (any, error) {
			<-release
			return agentproto.ProcessStarted{Pid: 1}, nil
		},
		agentproto.MsgPing: func(context.Context, *Request) (any, error) { return nil, nil },
	})
	send(t, host, agentproto.MsgNewContainer, 1, agentproto.Container{ID: "c"})
	send(t, host, agentproto.MsgPing, 2, nil)
	if f := recv(t, host); f.ID != 2 {
		t.Fatalf("first reply is for id %d, want the PING (2) while NEWCONTAINER is busy", f.ID)
	}
	close(release)
	if f := recv(t, host); f.ID != 1 || f.Type != agentproto.MsgAck {
		t.Fatalf("got %s id %d, want ACK id 1", f.Type, f.ID)
	}
}

func TestDispatcherHandlerPanicIsAnError(t *testing.T) {
	host, _, _ := startDispatcher(t, handlers{
		agentproto.MsgStats: func(context.Context, *Request) (any, error) {
			var m map[string]int
			m["boom"] = 1 // nil map write
			return nil, nil
		},
		agentproto.MsgPing: func(context.Context, *Request) (any, error) { return nil, nil },
	})
	send(t, host, agentproto.MsgStats, 1, agentproto.ContainerRef{Container: "c"})
	if f := recv(t, host); f.Type != agentproto.MsgError || f.ID != 1 {
		t.Fatalf("got %s id %d, want ERROR id 1", f.Type, f.ID)
	}
	send(t, host, agentproto.MsgPing, 2, nil)
	if f := recv(t, host); f.Type != agentproto.MsgAck || f.ID != 2 {
		t.Fatalf("got %s id %d after a panic, want ACK id 2", f.Type, f.ID)
	}
}

func TestDispatcherMalformedFrameEndsServe(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame func() []byte
	}{
		{"oversized length", func() []byte {
			b := make([]byte, 8)
			binary.BigEndian.PutUint32(b[0:4], uint32(agentproto.MsgPing))
			binary.BigEndian.PutUint32(b[4:8], agentproto.MaxControlFrame+1)
			return b
		}},
		{"length below header", func() []byte {
			b := make([]byte, 8)
			binary.BigEndian.PutUint32(b[4:8], 3)
			return b
		}},
		{"body not JSON", func() []byte {
			b := make([]byte, 8, 12)
			binary.BigEndian.PutUint32(b[0:4], uint32(agentproto.MsgPing))
			binary.BigEndian.PutUint32(b[4:8], 12)
			return append(b, "{{{{"...)
		}},
		{"command without id", func() []byte {
			var buf bytes.Buffer
			_ = agentproto.WriteControl(&buf, agentproto.ControlFrame{Type: agentproto.MsgPing})
			return buf.Bytes()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, _, done := startDispatcher(t, handlers{
				agentproto.MsgPing: func(context.Context, *Request) (any, error) { return nil, nil },
			})
			go host.Write(tc.frame())
			select {
			case err := <-done:
				if !errors.Is(err, agentproto.ErrProtocol) {
					t.Fatalf("Serve returned %v, want ErrProtocol", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not stop on a malformed frame")
			}
		})
	}
}

func TestDispatcherSendEvent(t *testing.T) {
	host, d, _ := startDispatcher(t, nil)
	go func() {
		_ = d.Send(agentproto.MsgReady, nil)
		_ = d.Send(agentproto.MsgProcessExit, agentproto.ProcessExit{Container: "c", Process: "init", ExitCode: 3})
	}()
	if f := recv(t, host); f.Type != agentproto.MsgReady || f.ID != 0 {
		t.Fatalf("got %s id %d, want READY id 0", f.Type, f.ID)
	}
	f := recv(t, host)
	var e agentproto.ProcessExit
	if f.Type != agentproto.MsgProcessExit || f.ID != 0 || f.Unmarshal(&e) != nil || e.ExitCode != 3 {
		t.Fatalf("got %s id %d %s", f.Type, f.ID, f.Data)
	}
}

func TestDispatcherCleanEOF(t *testing.T) {
	host, _, done := startDispatcher(t, nil)
	host.Close()
	if err := <-done; !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Serve returned %v, want EOF", err)
	}
}

// The dispatcher asks its route for each command's handler; a type the route does not
// know is refused as unsupported.
func TestDispatcherRoute(t *testing.T) {
	answer := func(v int) Handler {
		return func(context.Context, *Request) (any, error) { return agentproto.ProcessStarted{Pid: v}, nil }
	}
	host, _, _ := startDispatcher(t, handlers{
		agentproto.MsgStats:         answer(1),
		agentproto.MsgListProcesses: answer(3),
	})
	for i, c := range []struct {
		typ     agentproto.MsgType
		wantPid int // 0: want an ERROR
	}{
		{agentproto.MsgStats, 1},
		{agentproto.MsgListProcesses, 3},
		{agentproto.MsgPauseContainer, 0},
	} {
		id := uint64(i + 1)
		send(t, host, c.typ, id, agentproto.ContainerRef{Container: "c"})
		f := recv(t, host)
		if f.ID != id {
			t.Fatalf("%s: reply for id %d, want %d", c.typ, f.ID, id)
		}
		if c.wantPid == 0 {
			if f.Type != agentproto.MsgError || !strings.Contains(f.Error.Message, "unsupported") {
				t.Fatalf("%s: got %s %+v, want ERROR unsupported", c.typ, f.Type, f.Error)
			}
			continue
		}
		var ps agentproto.ProcessStarted
		if f.Type != agentproto.MsgAck || f.Unmarshal(&ps) != nil || ps.Pid != c.wantPid {
			t.Fatalf("%s: got %s %s, want ACK from handler %d", c.typ, f.Type, f.Data, c.wantPid)
		}
	}
}
