package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/errdefs/errgrpc"
	"github.com/runv-project/runv/logging"
)

// Log is the file in the pod's directory where the pod's shims log.
const Log = "shims.log"

// killedCode is the exit code of a process whose fate the shim cannot learn: the pod, and
// the process with it, is gone; reported as killed by SIGKILL.
const killedCode = 128 + int(unix.SIGKILL)

// Config is one shim's process.
type Config struct {
	// PodDir is the pod's directory (or a /proc/self/fd path to it).
	PodDir string
	// ID is the container; Process the exec'd process ("" for the container's own).
	ID, Process string
	// Console is the host pty slave of a terminal process, the shim's controlling
	// terminal: the shim gets SIGWINCH when the master is resized (nil without terminal).
	Console *os.File
	// Gate, if set, is read until EOF before the shim looks for its process: the process
	// may not exist yet when the shim starts (runv create starts it meanwhile).
	Gate *os.File
}

// Main is the shim (`runv shim`): the host process that stands in for one container
// process. Clients see its pid (--pid-file, state), signal it and wait for it. It forwards
// every signal it gets to the process in the VM and returns the process's exit code,
// which the shim exits with, as the process itself would (128+n when killed by signal n).
func Main(ctx context.Context, cfg Config) int {
	ctx = logging.With(ctx, "container", cfg.ID, "process", cfg.Process)
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	// Before anything else: a resize signalled before Notify would be lost (SIGWINCH is
	// ignored by default). relayWinsize reads the size once more after this.
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, unix.SIGWINCH)
	if cfg.Gate != nil {
		// Signals that come meanwhile wait in sigs and are forwarded once the process
		// exists.
		io.Copy(io.Discard, cfg.Gate)
		cfg.Gate.Close()
	}
	conn, err := podapi.Dial(cfg.PodDir)
	if err != nil {
		// The pod is gone, and the process with it: killed.
		logging.G(ctx).Warn("shim: pod daemon unreachable", "error", err)
		return killedCode
	}
	defer conn.Close()
	pod := podapi.NewPodClient(conn)
	stop := make(chan struct{})
	defer close(stop)
	go ForwardSignals(pod, cfg.ID, cfg.Process, sigs, stop)
	if cfg.Console != nil {
		go relayWinsize(ctx, pod, cfg.ID, cfg.Process, cfg.Console, winch, stop)
	}
	// A Wait can be cut by a connection hiccup while the daemon lives on; retry a few
	// times. A process the daemon does not know, or a daemon that is gone, means the
	// process is gone: report it killed.
	for attempt := 1; ; attempt++ {
		w, err := pod.Wait(ctx, &podapi.WaitRequest{Id: cfg.ID, Process: cfg.Process})
		if err == nil {
			if w.OomKilled && int(w.ExitCode) == killedCode {
				// Watchers of the host cgroup learn of the guest's OOM kill from a real
				// one here (oom.go). dieOfOOM returns only if it failed.
				logging.G(ctx).Info("shim: the process was OOM-killed in the VM: reproducing the OOM kill in the host cgroup")
				err := dieOfOOM(cfg.ID)
				logging.G(ctx).Warn("shim: could not reproduce the OOM kill on the host: watchers of the host cgroup miss it", "error", err)
			}
			return int(w.ExitCode)
		}
		if errors.Is(errgrpc.FromGRPC(err), errdefs.ErrNotFound) || attempt >= 5 || !podDaemonUp(pod) {
			logging.G(ctx).Warn("shim: lost the process", "error", err)
			return killedCode
		}
		logging.G(ctx).Debug("shim: wait interrupted; retrying", "error", fmt.Sprint(err))
	}
}

// ForwardSignals relays every signal we receive to a process in the VM, as runc's
// foreground run and shims do. SIGCHLD, SIGPIPE, SIGURG (the Go runtime's preemption signal)
// and SIGWINCH (a terminal resize, not a signal for the process) are not forwarded.
func ForwardSignals(pod podapi.PodClient, id, process string, sigs <-chan os.Signal, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case s := <-sigs:
			sig, ok := s.(unix.Signal)
			if !ok || sig == unix.SIGCHLD || sig == unix.SIGPIPE || sig == unix.SIGURG || sig == unix.SIGWINCH {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pod.Signal(ctx, &podapi.SignalRequest{Id: id, Process: process, Signal: int32(sig)})
			cancel()
		}
	}
}

// relayWinsize carries the window size of the shim's controlling terminal (the host pty
// slave) into the VM: now, and on every SIGWINCH, i.e. every time the holder of the master
// resizes it.
func relayWinsize(ctx context.Context, pod podapi.PodClient, id, process string, tty *os.File, winch <-chan os.Signal, stop <-chan struct{}) {
	var last [2]uint16
	for {
		rows, cols, err := Winsize(tty)
		if err != nil {
			logging.G(ctx).Warn("shim: read window size", "error", err)
		} else if rows > 0 && cols > 0 && [2]uint16{rows, cols} != last {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := pod.ResizePty(rctx, &podapi.ResizeRequest{Id: id, Process: process, Size: &podapi.ConsoleSize{Rows: uint32(rows), Cols: uint32(cols)}})
			cancel()
			if err != nil {
				logging.G(ctx).Warn("shim: resize the terminal in the VM", "rows", rows, "cols", cols, "error", errgrpc.FromGRPC(err))
			} else {
				last = [2]uint16{rows, cols}
			}
		}
		select {
		case <-stop:
			return
		case <-winch:
		}
	}
}

// Winsize reads a terminal's window size through a descriptor (0×0 when it has none).
func Winsize(f *os.File) (rows, cols uint16, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var ws *unix.Winsize
	var ierr error
	if err := rc.Control(func(fd uintptr) { ws, ierr = unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ) }); err != nil {
		return 0, 0, err
	}
	if ierr != nil {
		return 0, 0, fmt.Errorf("get window size: %w", ierr)
	}
	return ws.Row, ws.Col, nil
}

// podDaemonUp probes the daemon with a short call.
func podDaemonUp(pod podapi.PodClient) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := pod.Info(ctx, &podapi.Empty{})
	return err == nil
}
