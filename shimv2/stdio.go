package shimv2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// stdioPaths are a process's stdio as containerd names them: FIFO paths (ctr, the CRI),
// or for stdout and stderr a URI, binary://PROGRAM?ARGS (a logging program) or file://PATH.
type stdioPaths struct {
	stdin, stdout, stderr string
	terminal              bool
}

// loggerExitTimeout bounds the wait for a logging program to flush after the output ended.
const loggerExitTimeout = 12 * time.Second

// open opens the host side of a process's stdio. On error nothing stays open.
func (p stdioPaths) open(ctx context.Context, namespace, id string) (st supervisor.Stdio, err error) {
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if p.stdin != "" {
		// Non-blocking: the client may open its end later; reads wait for it. A
		// background context: cancelling the request must not close the FIFO.
		in, err := fifo.OpenFifo(context.Background(), p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return st, fmt.Errorf("open stdin FIFO %s: %w", p.stdin, err)
		}
		st.Stdin = in
	}
	u, err := url.Parse(p.stdout)
	if err != nil {
		return st, fmt.Errorf("stdout %q is neither a FIFO path nor a URI: %w: %w", p.stdout, err, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "", "fifo":
		for _, o := range []struct {
			path string
			dst  *io.WriteCloser
		}{{p.stdout, &st.Stdout}, {p.stderr, &st.Stderr}} {
			if o.path == "" || (o.dst == &st.Stderr && p.terminal) {
				continue
			}
			// Blocks until the client's reader is there (containerd opens it before
			// calling us).
			f, err := fifo.OpenFifo(ctx, o.path, syscall.O_WRONLY, 0)
			if err != nil {
				return st, fmt.Errorf("open output FIFO %s: %w", o.path, err)
			}
			*o.dst = f
		}
	case "file":
		for _, dst := range []*io.WriteCloser{&st.Stdout, &st.Stderr} {
			f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
			if err != nil {
				return st, fmt.Errorf("open log file %s (stdout %s): %w", u.Path, p.stdout, err)
			}
			*dst = f
		}
	case "binary":
		out, errw, err := startLogger(ctx, u, namespace, id)
		if err != nil {
			return st, err
		}
		st.Stdout, st.Stderr = out, errw
	default:
		return st, fmt.Errorf("stdout %q: unknown scheme %q: use a FIFO path, binary:// or file://: %w", p.stdout, u.Scheme, errdefs.ErrInvalidArgument)
	}
	return st, nil
}

// startLogger starts a logging program as containerd's runc shim does: the process's stdout
// and stderr arrive on its descriptors 3 and 4, and it closes (or writes to) descriptor 5
// once it is ready. It returns the writers of the two streams; closing both lets the program
// finish, and it is killed if it has not within loggerExitTimeout.
func startLogger(ctx context.Context, u *url.URL, namespace, id string) (stdout, stderr io.WriteCloser, err error) {
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		for _, f := range []*os.File{outR, outW, errR, errW} {
			f.Close()
		}
		return nil, nil, err
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+namespace)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	startErr := cmd.Start()
	for _, f := range []*os.File{outR, errR, readyW} {
		f.Close()
	}
	if startErr != nil {
		readyR.Close()
		outW.Close()
		errW.Close()
		return nil, nil, fmt.Errorf("start logging program %s (stdout %s): %w", u.Path, u.String(), startErr)
	}
	// Ready: one byte or EOF.
	readyR.Read(make([]byte, 1))
	readyR.Close()
	l := &logger{cmd: cmd, left: 2, log: logging.G(ctx)}
	return l.writer(outW), l.writer(errW), nil
}

// logger waits for its program once both of its streams were closed.
type logger struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	left int
	log  interface{ Warn(string, ...any) }
}

type loggerStream struct {
	*os.File
	l    *logger
	once sync.Once
}

func (l *logger) writer(f *os.File) io.WriteCloser { return &loggerStream{File: f, l: l} }

func (s *loggerStream) Close() error {
	err := s.File.Close()
	s.once.Do(func() {
		s.l.mu.Lock()
		s.l.left--
		last := s.l.left == 0
		s.l.mu.Unlock()
		if last {
			go s.l.wait()
		}
	})
	return err
}

func (l *logger) wait() {
	done := make(chan error, 1)
	go func() { done <- l.cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			l.log.Warn("logging program", "program", l.cmd.Path, "error", err)
		}
	case <-time.After(loggerExitTimeout):
		l.log.Warn("logging program did not exit after its streams closed; killing it", "program", l.cmd.Path, "after", loggerExitTimeout)
		l.cmd.Process.Kill()
		<-done
	}
}
