package supervisor

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// hostStdio holds the descriptors a client handed over for one process. Missing ones behave
// like /dev/null.
type hostStdio struct {
	stdin, stdout, stderr *os.File
}

func (s *Supervisor) takeStdio(req StdioRequest) (*hostStdio, error) {
	h := &hostStdio{}
	if req.Token == "" {
		return h, nil
	}
	files, err := s.stdio.Take(req.Token)
	if err != nil {
		return nil, err
	}
	// The client sends the descriptors it has, in stdin, stdout, stderr order.
	want := []*(*os.File){}
	if req.HasStdin {
		want = append(want, &h.stdin)
	}
	if req.HasStdout {
		want = append(want, &h.stdout)
	}
	if req.HasStderr {
		want = append(want, &h.stderr)
	}
	for i, f := range files {
		if i < len(want) {
			*want[i] = f
		} else {
			f.Close()
		}
	}
	if h.stdin != nil {
		h.stdin = interruptible(h.stdin)
	}
	return h, nil
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
	if unix.SetNonblock(fd, true) != nil {
		return f
	}
	nf := os.NewFile(uintptr(fd), f.Name())
	return nf
}

// closeOnError closes the descriptors if the call that claimed them fails (*err != nil):
// Create and Exec claim them before anything can fail, so that a failed call releases them
// at once and its client, reading its end of a pipe, sees EOF instead of waiting for the
// unclaimed ones to expire.
func (h *hostStdio) closeOnError(err *error) {
	if *err != nil {
		h.close()
	}
}

func (h *hostStdio) close() {
	for _, f := range []*os.File{h.stdin, h.stdout, h.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// relay copies between the host descriptors and the process's streams. The returned channel
// is closed once all output reached the host descriptors (and they were closed, so readers
// see EOF); stdin keeps flowing until the client closes it or the process is gone.
func (h *hostStdio) relay(stdin io.WriteCloser, stdout, stderr io.ReadCloser) <-chan struct{} {
	done := make(chan struct{})
	outputs := make(chan struct{}, 2)
	copyOut := func(dst *os.File, src io.ReadCloser) {
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
	go copyOut(h.stdout, stdout)
	go copyOut(h.stderr, stderr)
	go func() {
		<-outputs
		<-outputs
		if h.stdin != nil {
			// The process is gone: stop reading its stdin.
			h.stdin.Close()
		}
		close(done)
	}()
	if stdin != nil {
		go func() {
			if h.stdin != nil {
				io.Copy(stdin, h.stdin)
			}
			stdin.Close()
		}()
	}
	return done
}
