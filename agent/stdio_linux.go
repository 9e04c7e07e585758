package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/utils"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// procIO connects one process's stdio to its streams.
//
// Without a terminal: three pipes; stdout goes to the Stdio stream, stderr to the Stderr
// stream (or Stdio as well when the host gave no Stderr seq), and the Stdio stream's data
// from the host feeds stdin (the host's EOF frame closes it).
// With a terminal: libcontainer's init creates the pty inside the container and sends the
// master back over a socket (ConsoleSocket); the master is both directions of the Stdio
// stream.
type procIO struct {
	log      *logger
	terminal bool
	noStdin  bool

	stdio  *agentproto.Stream
	stderr *agentproto.Stream // nil: merged into stdio

	// The process's ends, closed in the agent once the process has them.
	child []*os.File

	stdinW  *os.File // our end of the stdin pipe (nil with a terminal or NoStdin)
	stdoutR *os.File
	stderrR *os.File // nil when merged

	consoleSock *os.File // our end of the console socket
	console     *os.File // pty master

	stdinOnce sync.Once
	outputs   sync.WaitGroup
}

// newProcIO opens the process's streams and prepares lp's stdio. The streams are open
// (registered with the mux) before the command is acknowledged: the host starts sending
// stdin only after the ACK, and data for a stream not open yet would be dropped.
func newProcIO(mux *agentproto.Mux, st agentproto.Stdio, terminal bool, lp *libcontainer.Process, log *logger) (_ *procIO, err error) {
	pio := &procIO{log: log, terminal: terminal, noStdin: st.NoStdin}
	defer func() {
		if err != nil {
			pio.abort()
		}
	}()
	if st.Stdio == 0 {
		return nil, errorf(agentproto.KindInvalid, "no stdio stream given")
	}
	if pio.stdio, err = mux.Open(st.Stdio); err != nil {
		return nil, withKind(agentproto.KindInvalid, err)
	}
	if st.Stderr != 0 && !terminal {
		if pio.stderr, err = mux.Open(st.Stderr); err != nil {
			return nil, withKind(agentproto.KindInvalid, err)
		}
		// Nothing comes from the host on a stderr stream: drop whatever does.
		pio.stderr.Close()
	}
	if st.NoStdin {
		pio.stdio.Close()
	}

	if terminal {
		parent, child, err := utils.NewSockPair("console")
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		pio.consoleSock, lp.ConsoleSocket = parent, child
		pio.child = append(pio.child, child)
		return pio, nil
	}

	if !st.NoStdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		lp.Stdin, pio.stdinW = r, w
		pio.child = append(pio.child, r)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	lp.Stdout, pio.stdoutR = w, r
	pio.child = append(pio.child, w)
	if pio.stderr != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stderr pipe: %w", err)
		}
		lp.Stderr, pio.stderrR = w, r
		pio.child = append(pio.child, w)
	} else {
		lp.Stderr = w
	}
	return pio, nil
}

// started runs once the process exists: our copies of its ends are closed (or its output
// never reaches EOF), and with a terminal the pty master is received (libcontainer's init
// sends it before it reports ready, so it is there by the time Start/Run returned).
func (pio *procIO) started() error {
	for _, f := range pio.child {
		f.Close()
	}
	pio.child = nil
	if !pio.terminal {
		return nil
	}
	master, err := recvFd(pio.consoleSock)
	pio.consoleSock.Close()
	pio.consoleSock = nil
	if err != nil {
		return fmt.Errorf("receive the terminal from the container: %w", err)
	}
	pio.console = master
	return nil
}

// abort undoes newProcIO for a process that never started. The streams are reset, not
// closed: the host never learnt about them.
func (pio *procIO) abort() {
	for _, f := range []*os.File{pio.stdinW, pio.stdoutR, pio.stderrR, pio.consoleSock, pio.console} {
		if f != nil {
			f.Close()
		}
	}
	for _, f := range pio.child {
		f.Close()
	}
	for _, s := range []*agentproto.Stream{pio.stdio, pio.stderr} {
		if s != nil {
			s.Reset()
		}
	}
}

// start begins copying. Call it after the command's ACK went out, so that the host knows the
// process before anything about it (output, exit) arrives.
func (pio *procIO) start() {
	if pio.terminal {
		pio.outputs.Add(1)
		go pio.copyOut("terminal", pio.console, pio.stdio)
		go pio.copyIn(pio.console)
		return
	}
	pio.outputs.Add(1)
	go pio.copyOut("stdout", pio.stdoutR, pio.stdio)
	if pio.stderrR != nil {
		pio.outputs.Add(1)
		go pio.copyOut("stderr", pio.stderrR, pio.stderr)
	}
	if pio.stdinW != nil {
		go pio.copyIn(pio.stdinW)
	}
}

// copyOut sends r to s until r ends, then sends s's EOF. If the stream fails the rest is
// read and dropped, so the process never blocks on a full pipe.
func (pio *procIO) copyOut(what string, r *os.File, s *agentproto.Stream) {
	defer pio.outputs.Done()
	defer r.Close()
	buf := make([]byte, 32<<10)
	failed := false
	for {
		n, err := r.Read(buf)
		if n > 0 && !failed {
			if _, werr := s.Write(buf[:n]); werr != nil {
				pio.log.Errorf("%s: %v (dropping the rest of the output)", what, werr)
				failed = true
			}
		}
		if err != nil {
			// A pty master reads EIO once the last slave fd closed: that is its EOF.
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) {
				pio.log.Errorf("read %s: %v", what, err)
			}
			break
		}
	}
	if !failed {
		if err := s.CloseWrite(); err != nil {
			pio.log.Errorf("%s: send EOF: %v", what, err)
		}
	}
}

// copyIn feeds the host's input to w until the host's EOF frame, then closes stdin.
func (pio *procIO) copyIn(w *os.File) {
	buf := make([]byte, 32<<10)
	for {
		n, err := pio.stdio.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				// The process is gone or closed its stdin: drop further input (and credit
				// it back, so the host's writer never blocks on us).
				pio.stdio.Close()
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				pio.closeStdin()
			}
			return
		}
	}
}

// closeStdin ends the process's input: closes the stdin pipe, or for a terminal types the
// terminal's EOF character (^D; effective in canonical mode, as on a real terminal). A
// terminal has no EOF frame of its own, hence CLOSESTDIN.
func (pio *procIO) closeStdin() {
	pio.stdinOnce.Do(func() {
		if pio.terminal {
			if pio.console != nil {
				_, _ = pio.console.Write([]byte{veof(pio.console)})
			}
			return
		}
		if pio.stdinW != nil {
			pio.stdinW.Close()
		}
		if !pio.noStdin {
			pio.stdio.Close()
		}
	})
}

// veof is the terminal's EOF character.
func veof(f *os.File) byte {
	var c byte = 4 // ^D
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS); err == nil && t.Cc[unix.VEOF] != 0 {
				c = t.Cc[unix.VEOF]
			}
		})
	}
	return c
}

// waitOutput returns once all output reached the host (EOF frames sent).
func (pio *procIO) waitOutput() { pio.outputs.Wait() }

// finish releases the process's stdio after it exited and its output was delivered.
func (pio *procIO) finish() {
	// No more input is wanted: whatever the host still sends is dropped and credited.
	pio.stdio.Close()
	if pio.stdinW != nil {
		pio.stdinW.Close()
	}
	if pio.console != nil {
		pio.console.Close()
	}
}

// resize sets the terminal's window size.
func (pio *procIO) resize(rows, cols uint16) error {
	if pio.console == nil {
		return nil
	}
	rc, err := pio.console.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ierr
}

// recvFd receives one file descriptor over a unix socket (SCM_RIGHTS). The descriptor is
// made non-blocking so the Go poller manages it and Close interrupts a pending Read.
func recvFd(sock *os.File) (*os.File, error) {
	buf := make([]byte, 4096) // the sender also sends the file's name
	oob := make([]byte, unix.CmsgSpace(4))
	var (
		n, oobn int
		rerr    error
	)
	rc, err := sock.SyscallConn()
	if err != nil {
		return nil, err
	}
	// The socket pair is blocking (not in the Go poller); the master is already queued
	// when this runs, so the call does not wait.
	if err := rc.Control(func(fd uintptr) {
		for {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
			if rerr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, fmt.Errorf("recvmsg: %w", rerr)
	}
	if n == 0 && oobn == 0 {
		return nil, errors.New("console socket closed without a file descriptor")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("expected 1 control message, got %d", len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return nil, fmt.Errorf("parse SCM_RIGHTS: %w", err)
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("expected 1 file descriptor, got %d", len(fds))
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	return os.NewFile(uintptr(fds[0]), string(buf[:n])), nil
}
