package supervisor

import (
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/fdpass"
)

// Stdio is the host side of one process's standard streams: what the supervisor copies the
// process's input from and its output to. Nil members behave like /dev/null. The supervisor
// owns them once handed over: it closes the output writers when the process's output ended
// (so their readers see EOF exactly then) and the input reader when the process is gone (a
// blocked Read must return on Close).
type Stdio struct {
	Stdin          io.ReadCloser
	Stdout, Stderr io.WriteCloser
}

// StdioRequest names the descriptors a CLI client parked with the pod daemon's fdpass server.
type StdioRequest struct {
	Token                          string
	HasStdin, HasStdout, HasStderr bool
	// HasStandIn: a pidfd of the process's host stand-in follows the streams.
	HasStandIn bool
}

// takeStdio claims the descriptors a client parked under req.Token: the process's streams,
// and the pidfd of its stand-in (nil when the client sent none), which the caller owns.
func takeStdio(srv *fdpass.Server, req StdioRequest) (h Stdio, standIn *os.File, err error) {
	if req.Token == "" {
		return h, nil, nil
	}
	files, err := srv.Take(req.Token)
	if err != nil {
		return h, nil, err
	}
	// The client sends the descriptors it has, in stdin, stdout, stderr, stand-in order.
	var stdin, stdout, stderr *os.File
	want := []**os.File{}
	if req.HasStdin {
		want = append(want, &stdin)
	}
	if req.HasStdout {
		want = append(want, &stdout)
	}
	if req.HasStderr {
		want = append(want, &stderr)
	}
	if req.HasStandIn {
		want = append(want, &standIn)
	}
	for i, f := range files {
		if i < len(want) {
			*want[i] = f
		} else {
			f.Close()
		}
	}
	// Typed nils must not become non-nil interfaces.
	if stdin != nil {
		h.Stdin = interruptible(stdin)
	}
	if stdout != nil {
		h.Stdout = stdout
	}
	if stderr != nil {
		h.Stderr = stderr
	}
	return h, standIn, nil
}

// interruptible lets a blocked read of stdin end when the process is gone. A pipe or FIFO is
// switched to non-blocking mode so the Go poller owns it and Close interrupts the read; the
// flag belongs to our read end's file description only. A terminal is left alone: its file
// description is shared with the user's shell, which must not find it non-blocking. (The pty
// slave runv creates for a terminal process is private to runv and arrives non-blocking
// already, so fdpass's os.NewFile made it pollable.)
func interruptible(f *os.File) *os.File {
	fd := int(f.Fd())
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		return f
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return f
	}
	// A duplicate, which the new *os.File owns alone: f is closed here, so its finalizer
	// cannot close the descriptor number later, when it may name another file (a client's
	// gRPC connection, whose calls then end in EOF).
	dup, err := unix.Dup(fd)
	if err != nil {
		return f
	}
	if unix.SetNonblock(dup, true) != nil {
		unix.Close(dup)
		return f
	}
	nf := os.NewFile(uintptr(dup), f.Name())
	f.Close()
	return nf
}

// closeOnError closes the streams if the call that took them fails (*err != nil): a failed
// Create or Exec releases them at once, and the client reading its end of a pipe sees EOF
// instead of waiting.
func (h Stdio) closeOnError(err *error) {
	if *err != nil {
		h.Close()
	}
}

// Close closes every stream that is set.
func (h Stdio) Close() {
	for _, c := range []io.Closer{h.Stdin, h.Stdout, h.Stderr} {
		if c != nil {
			c.Close()
		}
	}
}

// relay copies between the host streams and the process's streams. done is closed once
// all output reached the host writers (and they were closed, so readers see EOF); stdin
// keeps flowing until the client closes it or the process is gone, and stdinDone is
// closed once it stopped and the process's stdin was ended (after the last byte read).
func (h Stdio) relay(stdin io.WriteCloser, stdout, stderr io.ReadCloser) (done, stdinDone <-chan struct{}) {
	outDone, inDone := make(chan struct{}), make(chan struct{})
	outputs := make(chan struct{}, 2)
	copyOut := func(dst io.WriteCloser, src io.ReadCloser) {
		defer func() { outputs <- struct{}{} }()
		if src == nil {
			// A terminal has no stderr stream, but the client still handed over its
			// stderr (the pty slave again): it must be closed too, or the holder of the
			// pty master never sees the end of the output.
			if dst != nil {
				dst.Close()
			}
			return
		}
		var w io.Writer = io.Discard
		if dst != nil {
			w = dst
		}
		io.Copy(w, src)
		src.Close()
		if dst != nil {
			dst.Close()
		}
	}
	go copyOut(h.Stdout, stdout)
	go copyOut(h.Stderr, stderr)
	go func() {
		<-outputs
		<-outputs
		if h.Stdin != nil {
			// The process is gone: stop reading its stdin.
			h.Stdin.Close()
		}
		close(outDone)
	}()
	if stdin == nil {
		close(inDone)
		return outDone, inDone
	}
	go func() {
		defer close(inDone)
		if h.Stdin != nil {
			io.Copy(stdin, h.Stdin)
		}
		stdin.Close()
	}()
	return outDone, inDone
}
