package network

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/runv-project/runv/internal/leakcheck"
)

const fwdTimeout = 20 * time.Second

// dialIn connects to addr from inside the test namespace.
func dialIn(t *testing.T, n *testNS, addr string) (*net.TCPConn, error) {
	t.Helper()
	var c net.Conn
	var err error
	inNS(t, n.ns, func() { c, err = net.DialTimeout("tcp4", addr, fwdTimeout) })
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(fwdTimeout))
	return c.(*net.TCPConn), nil
}

func TestSteerLoopbackAnyPort(t *testing.T) {
	n := newTestNS(t, "steer")
	s, err := steerLoopback(n.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, port := range []int{80, 8080, 65535} {
		c, err := dialIn(t, n, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("dial port %d in the namespace: %v", port, err)
		}
		a, err := s.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got := a.LocalAddr().(*net.TCPAddr).Port; got != port {
			t.Errorf("accepted connection's local port = %d, want %d", got, port)
		}
		a.Close()
		c.Close()
	}
	// Only 127.0.0.1 is steered: another loopback address keeps the kernel's answer.
	if c, err := dialIn(t, n, "127.0.0.2:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial 127.0.0.2:80 = %v, %v; want connection refused", c, err)
	}
}

// fakeGuest stands for the VM: a TCP server per port on the test's own loopback (the
// forwarder's relaying is under test here; the agent's side has tests of its own).
type fakeGuest struct {
	mu    sync.Mutex
	ports map[uint16]string // guest port → address of the server standing for it
	dials chan uint16
	block chan struct{} // non-nil: dials wait for it
}

// waitSlotsFree waits until the forwards of the connections before have ended: a forward
// gives its slot back after its connection closed, and a subtest's connection must not find
// the bound still taken (it would be closed without the guest being dialled).
func waitSlotsFree(t *testing.T, f *PortForwarder) {
	t.Helper()
	for deadline := time.Now().Add(fwdTimeout); len(f.slots) > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d forwards still hold their slots %s after their connections closed", len(f.slots), fwdTimeout)
		}
		time.Sleep(time.Millisecond) // a poll with a deadline
	}
}

// waitDial returns the port of the next dial the forwarder made to the guest.
func (g *fakeGuest) waitDial(t *testing.T) uint16 {
	t.Helper()
	select {
	case port := <-g.dials:
		return port
	case <-time.After(fwdTimeout):
		t.Fatalf("the forwarder did not dial the guest within %s", fwdTimeout)
		return 0
	}
}

func (g *fakeGuest) dial(ctx context.Context, port uint16) (GuestConn, error) {
	g.dials <- port
	g.mu.Lock()
	block := g.block
	g.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	g.mu.Lock()
	addr, ok := g.ports[port]
	g.mu.Unlock()
	if !ok {
		return nil, errors.New("connection refused")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// upperServer answers what it reads, upper-cased, after its client's half close, then
// closes.
func upperServer(t *testing.T) string {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
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
				b, _ := io.ReadAll(c)
				for i := range b {
					if b[i] >= 'a' && b[i] <= 'z' {
						b[i] -= 'a' - 'A'
					}
				}
				c.Write(b)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPortForwarder(t *testing.T) {
	leakcheck.Goroutines(t)
	n := newTestNS(t, "pf")
	pod := &Pod{ns: n.ns}
	g := &fakeGuest{ports: map[uint16]string{8080: upperServer(t)}, dials: make(chan uint16, 16)}
	f, err := pod.ForwardLoopback(g.dial, 2, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			f.Close()
		}
	}()

	t.Run("half close both ways", func(t *testing.T) {
		c, err := dialIn(t, n, "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if port := g.waitDial(t); port != 8080 {
			t.Errorf("guest dialled port %d, want 8080", port)
		}
		big := make([]byte, 1<<20) // more than every buffer on the way: backpressure
		for i := range big {
			big[i] = 'a' + byte(i%26)
		}
		go func() {
			c.Write(big)
			c.CloseWrite()
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read the answer: %v", err)
		}
		if len(got) != len(big) || got[0] != 'A' || got[len(got)-1] != 'A'+byte((len(big)-1)%26) {
			t.Errorf("answer of %d bytes starting %q, want %d upper-cased bytes", len(got), got[:min(len(got), 8)], len(big))
		}
	})

	t.Run("refused in the guest closes the connection", func(t *testing.T) {
		c, err := dialIn(t, n, "127.0.0.1:9999")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		g.waitDial(t)
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("read = %q, %v; want EOF", b, err)
		}
	})

	t.Run("connections beyond the bound are closed", func(t *testing.T) {
		waitSlotsFree(t, f)
		block := make(chan struct{})
		g.mu.Lock()
		g.block = block
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			g.block = nil
			g.mu.Unlock()
		}()
		var held []*net.TCPConn
		for range 2 {
			c, err := dialIn(t, n, "127.0.0.1:8080")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			held = append(held, c)
			g.waitDial(t)
		}
		c, err := dialIn(t, n, "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if b, err := io.ReadAll(c); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("third connection: read = %q, %v; want it closed", b, err)
		}
		close(block)
		for _, h := range held {
			h.CloseWrite()
			io.ReadAll(h)
		}
	})

	t.Run("close leaves nothing", func(t *testing.T) {
		waitSlotsFree(t, f)
		c, err := dialIn(t, n, "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		g.waitDial(t)
		// Nor does a dial the guest never answers.
		g.mu.Lock()
		g.block = make(chan struct{})
		g.mu.Unlock()
		pending, err := dialIn(t, n, "127.0.0.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer pending.Close()
		g.waitDial(t)
		// An open forward does not hold Close up.
		done := make(chan error, 1)
		go func() { done <- f.Close() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(fwdTimeout):
			t.Fatal("Close waits for the forwards")
		}
		closed = true
		if b, err := io.ReadAll(pending); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("forward whose dial was pending at Close: read = %q, %v; want it closed", b, err)
		}
		if b, err := io.ReadAll(c); len(b) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("forward open at Close: read = %q, %v; want it closed", b, err)
		}
		if c, err := dialIn(t, n, "127.0.0.1:8080"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial after Close = %v, %v; want connection refused (nothing steered)", c, err)
		}
		if l := leakcheck.NetnsBPFLinks(t, n.path()); l != 0 {
			t.Errorf("%d BPF links still attached to the namespace after Close", l)
		}
	})
}

// holderEnv names the namespace TestSteerHolderProcess steers in, when the test binary
// runs as the holder process of TestSteerGoneWithItsProcess.
const holderEnv = "RUNV_TEST_STEER_HOLDER"

// TestSteerHolderProcess is not a test of its own: run by TestSteerGoneWithItsProcess, it
// sets up the steering, says so, and waits to be killed.
func TestSteerHolderProcess(t *testing.T) {
	path := os.Getenv(holderEnv)
	if path == "" {
		t.Skip("helper process of TestSteerGoneWithItsProcess")
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := steerLoopback(ns); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("steering\n")
	select {}
}

// A supervisor killed with SIGKILL leaves nothing in the pod's namespace: the program, its
// link and the listener live as long as the process's descriptors.
func TestSteerGoneWithItsProcess(t *testing.T) {
	n := newTestNS(t, "holder")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSteerHolderProcess$", "-test.v")
	cmd.Env = append(os.Environ(), holderEnv+"="+n.path())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "steering" {
				ready <- true
				io.Copy(io.Discard, out)
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("the holder process ended before it steered")
		}
	case <-time.After(fwdTimeout):
		t.Fatal("the holder process did not steer in time")
	}
	c, err := dialIn(t, n, "127.0.0.1:4242")
	if err != nil {
		t.Fatalf("dial while the holder steers: %v", err)
	}
	c.Close()
	if l := leakcheck.NetnsBPFLinks(t, n.path()); l != 1 {
		t.Errorf("%d BPF links attached while the holder runs, want 1", l)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// Link release after the last descriptor closed is asynchronous in the kernel.
	deadline := time.Now().Add(fwdTimeout)
	for leakcheck.NetnsBPFLinks(t, n.path()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("BPF link still attached to the namespace after its process was killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c, err := dialIn(t, n, "127.0.0.1:4242"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after the holder was killed = %v, %v; want connection refused", c, err)
	}
}

// BenchmarkLoopbackConnect: connect + accept + close on 127.0.0.1 inside a namespace, to a
// listener on the dialled port (plain) and through the sk_lookup steering (steered): what
// steering adds to every port-forward connection on the host.
func BenchmarkLoopbackConnect(b *testing.B) {
	n := newTestNS(b, "bench")
	for _, steered := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "steered"}[steered]
		b.Run(name, func(b *testing.B) {
			var ln *net.TCPListener
			addr := "127.0.0.1:8080"
			if steered {
				s, err := steerLoopback(n.ns)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				ln = s.ln
			} else {
				inNS(b, n.ns, func() {
					l, err := net.Listen("tcp4", addr)
					if err != nil {
						b.Error(err)
						return
					}
					ln = l.(*net.TCPListener)
				})
				if ln == nil {
					b.FailNow()
				}
				defer ln.Close()
			}
			accepted := make(chan struct{})
			go func() {
				defer close(accepted)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			b.ResetTimer()
			inNS(b, n.ns, func() {
				for range b.N {
					c, err := net.Dial("tcp4", addr)
					if err != nil {
						b.Error(err)
						return
					}
					c.Close()
				}
			})
			b.StopTimer()
			ln.Close()
			<-accepted
		})
	}
}
