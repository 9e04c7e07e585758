package agent

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/internal/leakcheck"
)

const forwardTestTimeout = 20 * time.Second

// forwardPair is a host mux talking to the guest mux the forwards use.
func forwardPair(t *testing.T) (host, guest *agentproto.Mux) {
	h, g := net.Pipe()
	host, guest = agentproto.NewMux(h, t.Logf), agentproto.NewMux(g, t.Logf)
	t.Cleanup(func() {
		host.Close()
		guest.Close()
	})
	return host, guest
}

// server listens on the test's loopback (standing for the guest's), on addr
// ("127.0.0.1:0", "[::1]:0"), and hands each connection to serve.
func server(t *testing.T, addr string, serve func(net.Conn)) uint16 {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func waitForwardsGone(t *testing.T, f *portForwards) {
	t.Helper()
	deadline := time.Now().Add(forwardTestTimeout)
	for {
		f.mu.Lock()
		n := len(f.open)
		f.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d forwards still open", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Through a server on 127.0.0.1, and on ::1 only (reached when 127.0.0.1 refuses, as
// containerd falls back in a runc pod).
func TestPortForwardRelaysWithHalfClose(t *testing.T) {
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(listen, func(t *testing.T) { testRelayWithHalfClose(t, listen) })
	}
}

func testRelayWithHalfClose(t *testing.T, listen string) {
	leakcheck.Goroutines(t)
	host, guest := forwardPair(t)
	port := server(t, listen, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the host's half close
		c.Write(bytes.ToUpper(b))
	})
	f := newPortForwards()
	s, err := host.Open(7)
	if err != nil {
		t.Fatal(err)
	}
	acked := false
	if err := f.start(context.Background(), agentproto.PortForward{Port: port, Stream: 7}, guest, func() error { acked = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if !acked {
		t.Fatal("no ACK after a successful connect")
	}
	msg := strings.Repeat("backpressure ", 100_000) // beyond one window of credit
	go func() {
		s.Write([]byte(msg))
		s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != strings.ToUpper(msg) {
		t.Fatalf("answer: %d bytes, %v; want %d upper-cased bytes", len(got), err, len(msg))
	}
	waitForwardsGone(t, f)
}

func TestPortForwardAbort(t *testing.T) {
	leakcheck.Goroutines(t)
	host, guest := forwardPair(t)
	port := server(t, "127.0.0.1:0", func(c net.Conn) {
		c.Write([]byte("hello"))
		io.Copy(io.Discard, c) // never closes on its own
	})
	f := newPortForwards()
	s, err := host.Open(9)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.start(context.Background(), agentproto.PortForward{Port: port, Stream: 9}, guest, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	f.abort(9)
	f.abort(9) // twice, and after the end: no error, nothing happens
	if b, err := io.ReadAll(s); err != nil || len(b) != 0 {
		t.Fatalf("after the abort: %q, %v; want EOF", b, err)
	}
	s.CloseWrite()
	waitForwardsGone(t, f)
	f.abort(9)
}

func TestPortForwardRefusals(t *testing.T) {
	leakcheck.Goroutines(t)
	_, guest := forwardPair(t)
	// A port nobody listens on: take one from the kernel and close it.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	full := newPortForwards()
	for i := range agentproto.MaxPortForwards {
		full.open[uint64(1000+i)] = nil
	}
	for _, tc := range []struct {
		name     string
		f        *portForwards
		m        agentproto.PortForward
		kind     string
		contains string
	}{
		{"port 0", newPortForwards(), agentproto.PortForward{Stream: 3}, agentproto.KindInvalid, "port 0"},
		{"stream 0", newPortForwards(), agentproto.PortForward{Port: 80}, agentproto.KindInvalid, "invalid stream"},
		{"window-update bit", newPortForwards(), agentproto.PortForward{Port: 80, Stream: agentproto.WindowUpdateBit | 3}, agentproto.KindInvalid, "invalid stream"},
		{"nothing listens", newPortForwards(), agentproto.PortForward{Port: free, Stream: 3}, "", "connection refused"},
		{"too many", full, agentproto.PortForward{Port: free, Stream: 3}, agentproto.KindState, "forwards are open already"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.f.open)
			err := tc.f.start(context.Background(), tc.m, guest, func() error {
				t.Error("ACK sent for a refused forward")
				return nil
			})
			if err == nil || kindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("got %v (kind %q); want kind %q, containing %q", err, kindOf(err), tc.kind, tc.contains)
			}
			if len(tc.f.open) != n {
				t.Errorf("%d forwards recorded after the refusal, want %d", len(tc.f.open), n)
			}
		})
	}
	// The refused stream was never opened: opening it now works.
	if s, err := guest.Open(3); err != nil {
		t.Errorf("stream 3 after the refusals: %v", err)
	} else {
		s.Reset()
	}
}
