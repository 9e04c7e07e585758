package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/errdefs/errgrpc"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/factoryd"
	"github.com/runv-project/runv/internal/fdpass"
	"github.com/runv-project/runv/internal/poddaemon"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/oci"
)

// daemonStartTimeout bounds the wait for a new pod daemon to listen (the VM boots after).
const daemonStartTimeout = 30 * time.Second

func newPodID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "p-" + hex.EncodeToString(b)
}

// startDaemon starts the pod daemon for a new pod and waits until it listens. The daemon
// reports readiness on an inherited pipe, so there is no polling for its socket.
func startDaemon(g *globals, podID, podDir string, spec *specs.Spec) (state.Process, error) {
	if err := os.MkdirAll(podDir, 0o700); err != nil {
		return state.Process{}, fmt.Errorf("create pod directory: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return state.Process{}, fmt.Errorf("find runv executable: %w", err)
	}
	logFile, err := os.OpenFile(filepath.Join(podDir, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return state.Process{}, fmt.Errorf("create daemon log: %w", err)
	}
	defer logFile.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return state.Process{}, err
	}
	defer r.Close()
	args := []string{
		"--root", g.root, "--kernel", g.kernel, "--initrd", g.initrd, "--accel", g.accel,
		"--machine", g.machine, "--default_cpus", strconv.Itoa(g.cpus), "--default_memory", strconv.Itoa(g.memoryMiB),
		"--log-format", "text",
	}
	if g.debug {
		args = append(args, "--debug")
	}
	if g.factory != "" {
		args = append(args, "--factory", g.factory)
	}
	if g.qemu != "" { // a preforked daemon was forked before our --qemu reached the environment
		args = append(args, "--qemu", g.qemu)
	}
	args = append(args, "containerd", "--solo-namespaced", "--pod-id", podID, "--pod-dir", podDir, "--ready-fd", strconv.Itoa(firstExtraFD))
	extra := []*os.File{w}
	// The VM's size is the first container's: the daemon requests it at once. A spec it
	// cannot size is left to the daemon, whose Create refuses it in its words.
	var prefetch *vmPrefetch
	if cpus, mem, err := oci.VMSize(spec); err == nil {
		args = append(args, "--first-cpus", strconv.Itoa(cpus), "--first-memory", strconv.Itoa(mem))
		// A pooled VM is asked for now, on the daemon's behalf, while it starts.
		if req, pooled := poddaemon.PooledFirstVM(g.boot(), podID, podDir, factory.Request{CPUs: cpus, MemoryMiB: mem}); pooled {
			if prefetch, err = newVMPrefetch(req); err != nil {
				return state.Process{}, err
			}
			defer prefetch.abandon()
			extra = append(extra, prefetch.r)
			args = append(args, "--vm-fd", strconv.Itoa(firstExtraFD+len(extra)-1))
		}
	}
	pid, err := startDaemonProcess(self, args, logFile, extra)
	w.Close()
	if err != nil {
		return state.Process{}, err
	}
	if prefetch != nil {
		prefetch.start(g.root, pid)
	}
	proc, _ := state.ProcessOf(pid)

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	// On failure the daemon is gone before we return: the caller removes the pod directory,
	// so the error carries the end of the daemon's log.
	logPath := filepath.Join(podDir, "daemon.log")
	select {
	case l := <-line:
		if l == "ok" {
			return proc, nil
		}
		unix.Kill(pid, unix.SIGKILL)
		waitGone(proc, 10*time.Second)
		if l == "" {
			l = "it exited without a word" + logTail(logPath)
		}
		return state.Process{}, fmt.Errorf("pod daemon failed to start: %s", strings.TrimPrefix(l, "error: "))
	case <-time.After(daemonStartTimeout):
		unix.Kill(pid, unix.SIGKILL)
		waitGone(proc, 10*time.Second)
		return state.Process{}, fmt.Errorf("pod daemon did not start within %s%s: %w", daemonStartTimeout, logTail(logPath), errdefs.ErrUnavailable)
	}
}

// startDaemonProcess starts the pod daemon runv args (the log its stdout and stderr, extra
// its descriptors 3, 4, ...) in a session of its own, and reaps it if it dies while we live;
// if it lives, it outlives us and init adopts it. The daemon started with us (a `runv run`,
// prefork.go) is it when there is one; else runv is exec'd now.
func startDaemonProcess(self string, args []string, log *os.File, extra []*os.File) (int, error) {
	if pid, err := startPreforkedDaemon(append([]string{self}, args...), log, extra); err == nil {
		go reap(pid)
		return pid, nil
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = extra
	// Its own session: the daemon must outlive this command and not get the terminal's signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start pod daemon: %w", err)
	}
	go cmd.Wait()
	return cmd.Process.Pid, nil
}

// vmPrefetch asks the factory daemon for a new pod's pooled VM on its daemon's behalf
// (factoryd.Prefetch) and tells the daemon the answer on a pipe (--vm-fd): the request
// travels while the daemon starts (its exec and Go's start, ~5 ms idle) instead of after.
type vmPrefetch struct {
	req  factory.Request
	r, w *os.File // the daemon's end and ours
}

// prefetchTimeout bounds the wait for a pooled VM on the daemon's behalf; the pool waits
// for a refill under way, the daemon's own request would too.
const prefetchTimeout = 3 * time.Minute

func newVMPrefetch(req factory.Request) (*vmPrefetch, error) {
	// The factory daemon moves the pooled VM's directories onto these: they must exist.
	for _, d := range []string{req.Dir, req.ShareDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create pod directory: %w", err)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pod %s: pipe for the prefetched VM: %w", req.ID, err)
	}
	return &vmPrefetch{req: req, r: r, w: w}, nil
}

// start asks for the VM of daemon pid, in the background, and writes the answer.
func (p *vmPrefetch) start(root string, pid int) {
	w := p.w
	p.w = nil
	go func() {
		defer w.Close()
		ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
		defer cancel()
		vm, err := factoryd.Prefetch(ctx, factoryd.SocketIn(root), p.req, pid)
		factoryd.WritePrefetched(w, p.req, vm, err)
	}()
}

// abandon closes the daemon's end in this process, and ours if start did not take it (the
// daemon then asks for its VM itself).
func (p *vmPrefetch) abandon() {
	p.r.Close()
	if p.w != nil {
		p.w.Close()
	}
}

// logTail is the last lines of a log, for an error message ("" when it is empty).
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	if t := strings.Join(lines, "\n  "); t != "" {
		return "; its log ends with:\n  " + t
	}
	return ""
}

// podConn is a client connection to a pod daemon.
type podConn struct {
	dir  string
	conn *grpc.ClientConn
	api  podapi.PodClient
}

func dialPod(podDir string) (*podConn, error) {
	conn, err := podapi.Dial(podDir)
	if err != nil {
		return nil, err
	}
	return &podConn{dir: podDir, conn: conn, api: podapi.NewPodClient(conn)}, nil
}

func (p *podConn) Close() error { return p.conn.Close() }

// sendStdio parks the given descriptors with the daemon and returns the token naming them.
// With selfStandIn it also parks a pidfd of this process, the foreground stand-in of the
// process the next Create or Exec starts: the daemon watches it from the moment that
// process exists, which spares a second hand-over and a WatchStandIn call.
func (p *podConn) sendStdio(stdin, stdout, stderr *os.File, selfStandIn bool) (*podapi.Stdio, error) {
	s := &podapi.Stdio{}
	var files []*os.File
	for _, f := range []struct {
		file *os.File
		has  *bool
	}{{stdin, &s.HasStdin}, {stdout, &s.HasStdout}, {stderr, &s.HasStderr}} {
		if f.file != nil {
			files = append(files, f.file)
			*f.has = true
		}
	}
	if selfStandIn {
		pidfd, err := openPidfd(os.Getpid())
		if err != nil {
			return nil, err
		}
		defer pidfd.Close()
		files = append(files, pidfd)
		s.HasStandIn = true
	}
	if len(files) == 0 {
		return s, nil
	}
	s.Token = newToken()
	if err := fdpass.Send(filepath.Join(p.dir, podapi.StdioSocket), s.Token, files); err != nil {
		return nil, err
	}
	return s, nil
}

// newToken names descriptors parked with the daemon.
func newToken() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// watchStandIn has the pod daemon kill process (of container id) in the VM as soon as pid,
// the host process standing in for it, dies (see supervisor/standin.go). pid must be one
// that cannot have been reused: our own, or our child that nobody reaped yet.
func (p *podConn) watchStandIn(ctx context.Context, id, process string, pid int) error {
	f, err := openPidfd(pid)
	if err != nil {
		return fmt.Errorf("container %q: %w", id, err)
	}
	defer f.Close()
	token := newToken()
	if err := fdpass.Send(filepath.Join(p.dir, podapi.StdioSocket), token, []*os.File{f}); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := p.api.WatchStandIn(rctx, &podapi.StandInRequest{Id: id, Process: process, Token: token}); err != nil {
		return fmt.Errorf("have the pod daemon watch the stand-in (pid %d) of container %q: %w", pid, id, rpcErr(err))
	}
	return nil
}

// openPidfd opens a pidfd of pid, a process standing in for one in the VM.
func openPidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd of the stand-in (pid %d): %w", pid, err)
	}
	return os.NewFile(uintptr(fd), "pidfd"), nil
}

// rpcErr turns a daemon error back into its class.
func rpcErr(err error) error { return errgrpc.FromGRPC(err) }

// daemonAlive reports whether the container's pod daemon still runs.
func daemonAlive(c *state.Container) bool { return c.Daemon.Alive() }

// waitGone waits until a process (not our child) exits, using a pidfd so that it is woken by
// the exit itself, and gives up after the deadline.
func waitGone(p state.Process, timeout time.Duration) error {
	if !p.Alive() {
		return nil
	}
	fd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("watch process %d: %w", p.Pid, err)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(timeout)
	for p.Alive() {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("process %d still running after %s", p.Pid, timeout)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		// pidfd becomes readable when the process exits; a zombie counts as gone for us.
		if _, err := unix.Poll(fds, int(min(left, 200*time.Millisecond)/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
	}
	return nil
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
