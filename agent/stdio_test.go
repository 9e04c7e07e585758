package agent

import (
	"io"
	"net"
	"os"
	"testing"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// muxPair connects a guest and a host mux over a socket pair.
func muxPair(t *testing.T) (guest, host *agentproto.Mux) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	log := testLogger(t)
	guest = agentproto.NewMux(conn(fds[0]), log.with("side", "guest").logf)
	host = agentproto.NewMux(conn(fds[1]), log.with("side", "host").logf)
	t.Cleanup(func() { guest.Close(); host.Close() })
	return guest, host
}

// processEnd takes a copy of the process's end of a pipe, as the process would hold it
// after start (procIO.started closes the agent's copies).
func processEnd(t *testing.T, f any) *os.File {
	t.Helper()
	file, ok := f.(*os.File)
	if !ok || file == nil {
		t.Fatalf("stdio end is %T, want *os.File", f)
	}
	fd, err := unix.Dup(int(file.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), file.Name())
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

func TestProcIOPipes(t *testing.T) {
	guest, host := muxPair(t)
	hostStdio, _ := host.Open(1)
	hostStderr, _ := host.Open(2)
	lp := &libcontainer.Process{}
	pio, err := newProcIO(guest, agentproto.Stdio{Stdio: 1, Stderr: 2}, false, lp, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stdin, stdout, stderr := processEnd(t, lp.Stdin), processEnd(t, lp.Stdout), processEnd(t, lp.Stderr)
	if err := pio.started(); err != nil {
		t.Fatal(err)
	}
	pio.start()

	go func() {
		hostStdio.Write([]byte("input"))
		hostStdio.CloseWrite() // EOF frame: closes the process's stdin
	}()
	if got := readAll(t, stdin); got != "input" {
		t.Fatalf("process read %q from stdin", got)
	}
	big := make([]byte, 3*agentproto.InitialWindow) // more than one credit window
	for i := range big {
		big[i] = byte(i)
	}
	go func() {
		stdout.Write(big)
		stderr.Write([]byte("oops"))
		stdout.Close()
		stderr.Close()
	}()
	if got := readAll(t, hostStdio); got != string(big) {
		t.Fatalf("host got %d bytes of stdout, want %d", len(got), len(big))
	}
	if got := readAll(t, hostStderr); got != "oops" {
		t.Fatalf("host got %q on stderr", got)
	}
	pio.waitOutput() // returns: both EOF frames went out
	pio.finish()
}

func TestProcIOMergedStderrNoStdin(t *testing.T) {
	guest, host := muxPair(t)
	hostStdio, _ := host.Open(5)
	lp := &libcontainer.Process{}
	pio, err := newProcIO(guest, agentproto.Stdio{Stdio: 5, NoStdin: true}, false, lp, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if lp.Stdin != nil {
		t.Fatalf("NoStdin: process stdin is %v, want nil (/dev/null)", lp.Stdin)
	}
	if lp.Stdout != lp.Stderr {
		t.Fatal("without a stderr stream, stderr must share stdout's pipe")
	}
	out := processEnd(t, lp.Stdout)
	if err := pio.started(); err != nil {
		t.Fatal(err)
	}
	pio.start()
	out.Write([]byte("a"))
	out.Write([]byte("b"))
	out.Close()
	if got := readAll(t, hostStdio); got != "ab" {
		t.Fatalf("got %q", got)
	}
	pio.waitOutput()
	pio.finish()
}

func TestProcIOCloseStdin(t *testing.T) {
	guest, host := muxPair(t)
	host.Open(1)
	host.Open(2)
	lp := &libcontainer.Process{}
	pio, err := newProcIO(guest, agentproto.Stdio{Stdio: 1, Stderr: 2}, false, lp, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stdin := processEnd(t, lp.Stdin)
	pio.started()
	pio.start()
	pio.closeStdin() // CLOSESTDIN: no EOF frame from the host
	if got := readAll(t, stdin); got != "" {
		t.Fatalf("got %q", got)
	}
	pio.closeStdin() // idempotent
}

func TestProcIOStreamsOpenBeforeAck(t *testing.T) {
	guest, _ := muxPair(t)
	lp := &libcontainer.Process{}
	pio, err := newProcIO(guest, agentproto.Stdio{Stdio: 9, Stderr: 10}, false, lp, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// Registered: opening again fails.
	if _, err := guest.Open(9); err == nil {
		t.Fatal("stdio stream not registered by newProcIO")
	}
	pio.abort()
	// A failed start resets them: the seqs are free again.
	if _, err := guest.Open(9); err != nil {
		t.Fatalf("after abort: %v", err)
	}
	if _, err := newProcIO(guest, agentproto.Stdio{}, false, &libcontainer.Process{}, testLogger(t)); kindOf(err) != agentproto.KindInvalid {
		t.Fatalf("no stdio seq: %v", err)
	}
}
