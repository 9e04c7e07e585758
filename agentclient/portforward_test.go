package agentclient

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/api/agentproto"
)

// guestAcceptsForward answers the next PORTFORWARD as a guest that connected: it opens
// the stream, then ACKs.
func (g *fakeGuest) acceptForward(wantPort uint16) *agentproto.Stream {
	g.t.Helper()
	f := g.expect(agentproto.MsgPortForward)
	var m agentproto.PortForward
	if err := f.Unmarshal(&m); err != nil {
		g.t.Fatal(err)
	}
	if m.Port != wantPort {
		g.t.Errorf("PORTFORWARD to port %d, want %d", m.Port, wantPort)
	}
	s, err := g.mux.Open(m.Stream)
	if err != nil {
		g.t.Fatal(err)
	}
	g.ack(f.ID, nil)
	return s
}

func dialAsync(c *Client, port uint16) <-chan dialResult {
	ch := make(chan dialResult, 1)
	go func() {
		pc, err := c.DialPort(context.Background(), port)
		ch <- dialResult{pc, err}
	}()
	return ch
}

type dialResult struct {
	c   *PortConn
	err error
}

func TestDialPortBothWaysWithHalfClose(t *testing.T) {
	c, g := newPair(t)
	res := dialAsync(c, 8080)
	gs := g.acceptForward(8080)
	r := wait(t, res, "DialPort")
	if r.err != nil {
		t.Fatal(r.err)
	}
	go func() {
		r.c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		r.c.CloseWrite()
	}()
	req, err := io.ReadAll(gs)
	if err != nil || string(req) != "GET / HTTP/1.0\r\n\r\n" {
		t.Fatalf("guest read %q, %v", req, err)
	}
	gs.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhi"))
	gs.CloseWrite()
	resp, err := io.ReadAll(r.c)
	if err != nil || string(resp) != "HTTP/1.0 200 OK\r\n\r\nhi" {
		t.Fatalf("host read %q, %v", resp, err)
	}
	// Both directions ended: Close tells the guest nothing.
	if err := r.c.Close(); err != nil {
		t.Fatal(err)
	}
	g.sync(c)
}

func TestDialPortRefused(t *testing.T) {
	c, g := newPair(t)
	res := dialAsync(c, 9)
	f := g.expect(agentproto.MsgPortForward)
	g.fail(f.ID, "", "connect to 127.0.0.1:9 in the guest: connection refused")
	r := wait(t, res, "DialPort")
	if r.err == nil || !strings.Contains(r.err.Error(), "connection refused") || !strings.Contains(r.err.Error(), "port 9") {
		t.Fatalf("DialPort = %v, want the guest's refusal naming the port", r.err)
	}
	var re *agentproto.RemoteError
	if !errors.As(r.err, &re) {
		t.Errorf("%v does not carry the RemoteError", r.err)
	}
	g.sync(c)
}

func TestPortConnCloseAborts(t *testing.T) {
	c, g := newPair(t)
	res := dialAsync(c, 80)
	gs := g.acceptForward(80)
	r := wait(t, res, "DialPort")
	if r.err != nil {
		t.Fatal(r.err)
	}
	// The guest writes more than the window: the host reader gives up mid-way.
	go gs.Write(make([]byte, 2*agentproto.InitialWindow))
	closed := make(chan error, 1)
	go func() { closed <- r.c.Close() }()
	f := g.expect(agentproto.MsgCloseForward)
	var ref agentproto.ForwardRef
	if err := f.Unmarshal(&ref); err != nil || ref.Stream != gs.Seq() {
		t.Fatalf("CLOSEFORWARD %+v, %v; want stream %d", ref, err, gs.Seq())
	}
	g.ack(f.ID, nil)
	if err := wait(t, closed, "Close"); err != nil {
		t.Fatal(err)
	}
	// The host's EOF arrives; what the guest wrote was credited back, not left waiting.
	if b, err := io.ReadAll(gs); err != nil || len(b) != 0 {
		t.Fatalf("guest read %d bytes, %v; want EOF", len(b), err)
	}
	gs.CloseWrite()
	if _, err := r.c.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
}

// A guest that does not answer a PORTFORWARD holds the caller only until its ctx ends; its
// late ACK is discarded, and what it then sends on the stream is dropped, not buffered.
func TestDialPortGuestNeverAnswers(t *testing.T) {
	c, g := newPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		_, err := c.DialPort(ctx, 8080)
		res <- err
	}()
	f := g.expect(agentproto.MsgPortForward)
	if err := wait(t, res, "DialPort"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("DialPort = %v, want the deadline", err)
	}
	var m agentproto.PortForward
	if err := f.Unmarshal(&m); err != nil {
		t.Fatal(err)
	}
	gs, err := g.mux.Open(m.Stream)
	if err != nil {
		t.Fatal(err)
	}
	g.ack(f.ID, nil)
	gs.Write([]byte("late"))
	gs.CloseWrite()
	g.sync(c) // the client took the late ACK in its stride
	if err := c.Err(); err != nil {
		t.Fatalf("client failed: %v", err)
	}
}
