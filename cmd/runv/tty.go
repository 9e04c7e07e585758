package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/logging"
)

// Terminals.
//
// The process's terminal is a pty inside the VM (libcontainer makes it, the agent holds its
// master). The host gets a pty of its own for every terminal process: runv creates it, hands
// its slave to the pod daemon as the process's stdin/stdout/stderr (the daemon relays
// between it and the guest pty), and gives its master to whoever drives the terminal:
//
//   - detached (create, run -d, exec -d): the --console-socket client, over SCM_RIGHTS as
//     runc sends it, so containerd's runc shim, conmon and `recvtty` work unchanged;
//   - foreground (run, exec without -d): runv itself, which copies between the master and
//     its own stdio and puts the user's terminal in raw mode until it returns, as runc does.
//
// The host slave is raw (no echo, no line editing, no output processing) so that it is a
// transparent pipe: the guest pty does all the terminal work, exactly once.
//
// Window size: whoever holds the master resizes it. The host slave then has the new size and
// its session's foreground process group gets SIGWINCH; someone must carry the size into the
// VM (ResizePty → agent WINSIZE → TIOCSWINSZ on the guest master). For a detached process
// that is the shim: it starts in a session of its own with the slave as its controlling
// terminal (setsid + TIOCSCTTY), so the kernel signals it on every resize; it reads the size
// with TIOCGWINSZ and calls ResizePty (once at start too, for a resize that came before it
// listened). In the foreground runv is in the user's terminal's foreground process group, so
// it receives SIGWINCH for the user's terminal and copies that size to the host master and
// the guest.

// ptmxName is the name sent with the master over the console socket, as runc sends the
// name of the pty master it opened.
const ptmxName = "/dev/ptmx"

// hostPty is a pty pair runv made on the host for one terminal process.
type hostPty struct {
	master *os.File // non-blocking: pollable here, so Close interrupts a pending read
	slave  *os.File // raw, non-blocking (see newHostPty)
}

// newHostPty opens a pty pair. The slave is raw and non-blocking: the pod daemon receives it
// over SCM_RIGHTS and must be able to interrupt its read of it when the process ends (it
// only makes a received descriptor pollable when it is non-blocking already); nobody but
// runv shares this file description, so the flag surprises no one.
func newHostPty() (_ *hostPty, err error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open a pseudo-terminal (/dev/ptmx): %w", err)
	}
	master := os.NewFile(uintptr(m), ptmxName)
	defer func() {
		if err != nil {
			master.Close()
		}
	}()
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		return nil, fmt.Errorf("unlock pseudo-terminal: %w", err)
	}
	// TIOCGPTPEER opens the slave through the master, never by a path someone could swap.
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK))
	if errno != 0 {
		return nil, fmt.Errorf("open pseudo-terminal slave: %w", errno)
	}
	slave := os.NewFile(s, "pty-slave")
	if err := makeRaw(int(s)); err != nil {
		slave.Close()
		return nil, fmt.Errorf("pseudo-terminal slave: %w", err)
	}
	return &hostPty{master: master, slave: slave}, nil
}

// makeRaw is cfmakeraw(3).
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("get terminal attributes: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("set raw mode: %w", err)
	}
	return nil
}

func setWinsize(f *os.File, rows, cols uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("set window size: %w", ierr)
	}
	return nil
}

// procTerminal is the host side of one terminal process while it is being created.
type procTerminal struct {
	pty *hostPty
	// sock is the --console-socket connection, made before anything is created so that a
	// wrong path fails fast (nil in the foreground).
	sock       *net.UnixConn
	rows, cols uint16
}

// checkTerminal is runc's rule for a process's terminal and the console socket: a detached
// terminal needs a socket to send the master to, and a socket makes sense only for one.
func checkTerminal(terminal, detach bool, consoleSocket string) error {
	if detach && terminal && consoleSocket == "" {
		return fmt.Errorf("cannot allocate tty if runv will detach without setting console socket (pass --console-socket, or set process.terminal to false): %w", errdefs.ErrInvalidArgument)
	}
	if (!detach || !terminal) && consoleSocket != "" {
		return fmt.Errorf("cannot use console socket if runv will not detach or allocate tty: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// prepareTerminal checks the terminal settings and, for a terminal process, makes the host
// pty and connects to the console socket. It returns nil for a process without a terminal.
// The size comes from process.consoleSize, else (in the foreground) from the user's terminal.
func prepareTerminal(p *specs.Process, detach bool, consoleSocket string) (_ *procTerminal, err error) {
	if err := checkTerminal(p.Terminal, detach, consoleSocket); err != nil {
		return nil, err
	}
	if !p.Terminal {
		return nil, nil
	}
	t := &procTerminal{}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if consoleSocket != "" {
		conn, err := net.DialTimeout("unix", consoleSocket, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("connect to console socket %s: %w", consoleSocket, err)
		}
		t.sock = conn.(*net.UnixConn)
	}
	if t.pty, err = newHostPty(); err != nil {
		return nil, err
	}
	if cs := p.ConsoleSize; cs != nil && cs.Height > 0 && cs.Width > 0 {
		t.rows, t.cols = uint16(cs.Height), uint16(cs.Width)
	} else if !detach {
		if c, err := console.ConsoleFromFile(os.Stdin); err == nil {
			if ws, err := c.Size(); err == nil {
				t.rows, t.cols = ws.Height, ws.Width
			}
		}
	}
	if t.rows > 0 && t.cols > 0 {
		if err := setWinsize(t.pty.master, t.rows, t.cols); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// size is the initial console size for the Create/Exec request (nil: the agent's default).
func (t *procTerminal) size() *podapi.ConsoleSize {
	if t == nil || t.rows == 0 || t.cols == 0 {
		return nil
	}
	return &podapi.ConsoleSize{Rows: uint32(t.rows), Cols: uint32(t.cols)}
}

// stdio returns the descriptors to hand the daemon: the slave, three times over.
func (t *procTerminal) stdio() (stdin, stdout, stderr *os.File) {
	return t.pty.slave, t.pty.slave, t.pty.slave
}

// sendMaster hands the master to the console socket client (runc's wire format: the name as
// data, the descriptor as SCM_RIGHTS) and closes runv's copies of it and of the socket. The
// master is handed over blocking, as runc's is.
func (t *procTerminal) sendMaster() error {
	if t == nil || t.sock == nil {
		return nil
	}
	rc, err := t.pty.master.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if serr = unix.SetNonblock(int(fd), false); serr != nil {
			return
		}
		_, _, serr = t.sock.WriteMsgUnix([]byte(ptmxName), unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("send the terminal to the console socket %s: %w", t.sock.RemoteAddr(), serr)
	}
	t.pty.master.Close()
	t.pty.master = nil
	t.sock.Close()
	t.sock = nil
	return nil
}

// closeSlave drops runv's copy of the slave once the daemon (and the shim) hold theirs: the
// master must see the end of the output when they close theirs.
func (t *procTerminal) closeSlave() {
	if t != nil && t.pty != nil && t.pty.slave != nil {
		t.pty.slave.Close()
		t.pty.slave = nil
	}
}

// Close releases whatever runv still holds.
func (t *procTerminal) Close() {
	if t == nil {
		return
	}
	t.closeSlave()
	if t.pty != nil && t.pty.master != nil {
		t.pty.master.Close()
		t.pty.master = nil
	}
	if t.sock != nil {
		t.sock.Close()
		t.sock = nil
	}
}

// foreground is runv driving a terminal process from the user's terminal (run, exec without
// -d): it copies between its stdio and the host master, keeps the user's terminal raw, and
// carries window size changes into the VM.
type foreground struct {
	master    *os.File
	user      console.Console // nil when stdin is not a terminal
	outDone   chan struct{}
	closeOnce sync.Once
}

// attachForeground starts copying. The user's terminal, if stdin is one, goes raw until
// Close: keys such as ^C reach the process in the VM as bytes, and its terminal interprets
// them, as with runc.
func attachForeground(t *procTerminal) (*foreground, error) {
	f := &foreground{master: t.pty.master, outDone: make(chan struct{})}
	t.pty.master = nil // ours now
	if c, err := console.ConsoleFromFile(os.Stdin); err == nil {
		if err := c.SetRaw(); err != nil {
			f.master.Close()
			return nil, fmt.Errorf("set the terminal on stdin to raw mode: %w", err)
		}
		f.user = c
	}
	go func() {
		// Ends with EIO once the daemon closed the slave after the last output; runv
		// exits soon after anyway, so a blocked read of stdin needs no interrupting.
		_, _ = io.Copy(f.master, os.Stdin)
	}()
	go func() {
		defer close(f.outDone)
		_, _ = io.Copy(os.Stdout, f.master)
	}()
	return f, nil
}

// resize copies the user's terminal size to the host master and into the VM.
func (f *foreground) resize(ctx context.Context, pod *podConn, id, process string) {
	if f == nil || f.user == nil {
		return
	}
	ws, err := f.user.Size()
	if err != nil || ws.Height == 0 || ws.Width == 0 {
		return
	}
	if err := setWinsize(f.master, ws.Height, ws.Width); err != nil {
		logging.G(ctx).Debug("resize host pty", "error", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := pod.api.ResizePty(rctx, &podapi.ResizeRequest{Id: id, Process: process, Size: &podapi.ConsoleSize{Rows: uint32(ws.Height), Cols: uint32(ws.Width)}}); err != nil {
		logging.G(ctx).Debug("resize terminal in the VM", "container", id, "process", process, "error", rpcErr(err))
	}
}

// Close waits (briefly) for the output to be drained, then restores the user's terminal.
// Call it after the process's exit was reported: the daemon has written all output to the
// slave and closed it by then, so the master reads to its end promptly.
func (f *foreground) Close() {
	if f == nil {
		return
	}
	f.closeOnce.Do(func() {
		select {
		case <-f.outDone:
		case <-time.After(10 * time.Second):
			// Someone else still holds the slave (a leaked descriptor): do not hang.
		}
		f.master.Close()
		if f.user != nil {
			if err := f.user.Reset(); err != nil && !errors.Is(err, os.ErrClosed) {
				fmt.Fprintf(os.Stderr, "runv: restore terminal: %v\n", err)
			}
		}
	})
}
