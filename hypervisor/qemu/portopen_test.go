package qemu

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPortOpenedConnNudgesOnce: the guest's first bytes wake QEMU's main loop once; reads
// that bring nothing (a deadline) do not count, later bytes do not nudge again, and the
// connection keeps what a holder needs to pass it on (File).
func TestPortOpenedConnNudgesOnce(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	guest := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			guest <- c
		}
		close(guest)
	}()
	host, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := <-guest
	if g == nil {
		t.Fatal("no guest end")
	}
	defer g.Close()
	nudges := make(chan struct{}, 4)
	v := &vm{}
	c := v.nudgeOnPortOpen(host)
	c.(*portOpenedConn).nudge = func() { nudges <- struct{}{} }
	defer c.Close()

	buf := make([]byte, 16)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := c.Read(buf); n != 0 || err == nil {
		t.Fatalf("read before the guest wrote: %d, %v", n, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	for _, msg := range []string{"READY", "ANSWER"} {
		if _, err := g.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != msg {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, msg)
		}
	}
	select {
	case <-nudges:
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's first bytes did not wake QEMU's main loop")
	}
	select {
	case <-nudges:
		t.Fatal("nudged again on later bytes")
	case <-time.After(50 * time.Millisecond):
	}
	f, err := c.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatalf("the wrapped channel has no descriptor to pass: %v", err)
	}
	f.Close()
}
