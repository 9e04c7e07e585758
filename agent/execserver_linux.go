package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/convert"
)

// A container's exec server: the exec helper started once, at the container's first exec,
// in T_SERVE mode. It joins the init's namespaces once and then forks one process per exec
// (straight into the container's cgroup, with the agent as its parent), which does what
// the one-shot helper's child does. Per exec that saves the helper's fork+exec and its
// setns calls (docs/performance.md, "`runv exec`, stop 13"). The server stays out of the
// container: in the agent's cgroup (not frozen with it, not counted in its pids), in the
// guest's pid namespace (setns of a pid namespace places only the children), and it ends
// when the agent closes its socket: when the container's init exits, or the container
// goes. cmd/runv-exec/runv-exec.c has the other side of the protocol.

// serveMagic starts each exec's message to the server.
const serveMagic = "RVZ1"

// execServerStop bounds the wait for a server's exit once its socket is closed.
const execServerStop = 5 * time.Second

// errServerGone is an exec the server did not take: it has exited (or its socket failed).
// No process was started; the caller runs the one-shot helper instead.
var errServerGone = errors.New("the container's exec server is gone")

// execServer is a running server and the agent's end of its socket.
type execServer struct {
	mu     sync.Mutex // one message at a time on the socket
	sock   int        // -1 once closed
	pid    int
	exited chan struct{} // closed once the server exited and was waited for
}

// startExecServer starts the helper as the exec server of the container whose namespaces
// are given, in the agent's cgroup, and waits until it has joined them. onExit runs once
// it exited and was reaped.
func startExecServer(helperPath string, namespaces []nsFile, onExit func(pid int)) (*execServer, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("exec server: socket pair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "exec-server")
	defer theirs.Close()
	helper, repR, err := spawnHelper(helperPath, &convert.ExecRequest{Serve: theirs}, [3]*os.File{}, namespaces, nil, nil, nil, nil)
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("exec server: %w", err)
	}
	defer repR.Close()
	if rep, err := readReport(newReportReader(repR, execHelperWait)); err != nil || rep.kind != reportReady {
		unix.Close(fds[0])
		helper.killAndReap()
		if err == nil {
			err = helperError(rep, "")
		}
		return nil, fmt.Errorf("exec server: %w", err)
	}
	s := &execServer{sock: fds[0], pid: helper.Pid, exited: make(chan struct{})}
	go func() {
		_, _ = helper.wait()
		if onExit != nil {
			onExit(helper.Pid)
		}
		close(s.exited)
	}()
	return s, nil
}

// exec starts req's process through the server: in the first cgroup of dirs that takes
// it, with stdio (nil: /dev/null) and the console socket (nil: no terminal). It returns
// once the process exec'd its program, or the step that failed; errServerGone when the
// server did not take the request (nothing was started).
func (s *execServer) exec(req *convert.ExecRequest, stdio [3]*os.File, console *os.File, dirs []string, tr *stepTrace) (*childProcess, error) {
	if req.Create != nil {
		// Its start is read from the report pipe, which this does not hand back.
		return nil, errors.New("exec server: a container's create goes through the one-shot helper")
	}
	var closers []*os.File
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()
	repR, repW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("exec server: report pipe: %w", err)
	}
	defer repR.Close()
	closers = append(closers, repW)
	files := []*os.File{repW}
	for i, dir := range dirs {
		if dir == "" || slices.Contains(dirs[:i], dir) {
			continue // (the init's cgroup is usually the container's)
		}
		cg, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // gone: the next one, as startInCgroup does
		}
		closers = append(closers, cg)
		files = append(files, cg)
	}
	ncg := len(files) - 1
	if ncg == 0 {
		return nil, errors.New("exec server: the container has no cgroup")
	}
	std, stdClosers, err := stdioOrNull(stdio)
	closers = append(closers, stdClosers...)
	if err != nil {
		return nil, err
	}
	files = append(files, std[:]...)
	// The process's descriptor numbers: 0-2 stdio, 4 the report, 5 on the request's own.
	req.Namespaces = nil
	req.ConsoleFD = -1
	if console != nil {
		req.ConsoleFD = execFirstExtraFD
		files = append(files, console)
	}
	data, err := req.Encode()
	if err != nil {
		return nil, err
	}
	body := data[len(convert.ExecMagic)+4:]
	hdr := []byte(serveMagic)
	for _, v := range []int{len(body), ncg, len(files)} {
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(v))
	}
	raw := make([]int, len(files))
	for i, f := range files {
		raw[i] = int(f.Fd())
	}
	if err := s.send(hdr, unix.UnixRights(raw...), body); err != nil {
		return nil, err
	}
	tr.mark("request sent to the exec server")
	repW.Close()
	closers = closers[1:]

	rd := newReportReader(repR, execHelperWait)
	first, err := readReport(rd)
	switch {
	case err == io.EOF:
		// The server took the request and died before it forked: nothing runs.
		return nil, errServerGone
	case err != nil:
		return nil, err
	}
	proc, _, err := awaitForked("exec server", first, rd, req, tr)
	return proc, err
}

// send writes one message: hdr with the descriptors, then body.
func (s *execServer) send(hdr, rights, body []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sock < 0 {
		return errServerGone
	}
	if err := retryEINTR(func() error { return unix.Sendmsg(s.sock, hdr, rights, nil, 0) }); err != nil {
		return fmt.Errorf("%w: %v", errServerGone, err)
	}
	for len(body) > 0 {
		var n int
		err := retryEINTR(func() (err error) { n, err = unix.Write(s.sock, body); return err })
		if err != nil {
			// Part of a request is in the socket: the server cannot serve another.
			s.closeLocked()
			return fmt.Errorf("%w: %v", errServerGone, err)
		}
		body = body[n:]
	}
	return nil
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func (s *execServer) closeLocked() {
	if s.sock >= 0 {
		unix.Close(s.sock)
		s.sock = -1
	}
}

// stop closes the server's socket, which ends it, and waits for its exit (bounded: then
// it is killed).
func (s *execServer) stop() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closeLocked()
	s.mu.Unlock()
	select {
	case <-s.exited:
	case <-time.After(execServerStop):
		_ = unix.Kill(s.pid, unix.SIGKILL)
		<-s.exited
	}
}
