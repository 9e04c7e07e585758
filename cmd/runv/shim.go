package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/shim"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

// shimCommand is the host process that stands in for one container process: clients see
// its pid (--pid-file, state), signal it and wait for it. It forwards every signal it gets to
// the process in the VM and exits with the process's exit code, as the process itself would
// (128+n when killed by signal n).
var shimCommand = &cli.Command{
	Name:   "shim",
	Hidden: true,
	Usage:  "stand in on the host for a process running in a pod VM (internal)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "pod-dir", Required: true},
		&cli.StringFlag{Name: "id", Required: true},
		&cli.StringFlag{Name: "process"},
		// The host pty slave of a terminal process, which the shim has as its controlling
		// terminal: it gets SIGWINCH when the master is resized (see tty.go).
		&cli.IntFlag{Name: "console-fd"},
	},
	Action: func(c *cli.Context) error {
		id, process := c.String("id"), c.String("process")
		ctx := logging.With(c.Context, "container", id, "process", process)
		sigs := make(chan os.Signal, 64)
		signal.Notify(sigs)
		// Before anything else: a resize signalled before Notify would be lost (SIGWINCH is
		// ignored by default). relayWinsize reads the size once more after this.
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, unix.SIGWINCH)
		pod, err := dialPod(c.String("pod-dir"))
		if err != nil {
			// The pod is gone, and the process with it: killed.
			logging.G(ctx).Warn("shim: pod daemon unreachable", "error", err)
			return exitError{137}
		}
		defer pod.Close()
		stop := make(chan struct{})
		defer close(stop)
		go forwardSignals(pod, id, process, sigs, stop)
		if fd := c.Int("console-fd"); fd > 0 {
			go relayWinsize(ctx, pod, id, process, os.NewFile(uintptr(fd), "console"), winch, stop)
		}
		// A Wait can be cut by a connection hiccup while the daemon lives on; retry a few
		// times. A process the daemon does not know, or a daemon that is gone, means the
		// process is gone: report it killed.
		for attempt := 1; ; attempt++ {
			w, err := pod.api.Wait(ctx, &podapi.ProcessRequest{Id: id, Process: process})
			if err == nil {
				return exitError{int(w.ExitCode)}
			}
			if errors.Is(rpcErr(err), errdefs.ErrNotFound) || attempt >= 5 || !podDaemonUp(pod) {
				logging.G(ctx).Warn("shim: lost the process", "error", err)
				return exitError{137}
			}
			logging.G(ctx).Debug("shim: wait interrupted; retrying", "error", fmt.Sprint(err))
		}
	},
}

// shimLog is the file in the pod's directory where the pod's shims log.
const shimLog = "shims.log"

// relayWinsize carries the window size of the shim's controlling terminal (the host pty
// slave) into the VM: now, and on every SIGWINCH, i.e. every time the holder of the master
// resizes it.
func relayWinsize(ctx context.Context, pod *podConn, id, process string, tty *os.File, winch <-chan os.Signal, stop <-chan struct{}) {
	var last [2]uint16
	for {
		rows, cols, err := winsize(tty)
		if err != nil {
			logging.G(ctx).Warn("shim: read window size", "error", err)
		} else if rows > 0 && cols > 0 && [2]uint16{rows, cols} != last {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := pod.api.ResizePty(rctx, &podapi.ResizeRequest{Id: id, Process: process, Size: &podapi.ConsoleSize{Rows: uint32(rows), Cols: uint32(cols)}})
			cancel()
			if err != nil {
				logging.G(ctx).Warn("shim: resize the terminal in the VM", "rows", rows, "cols", cols, "error", rpcErr(err))
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

// spawnShim starts the host process that stands in for a container process: its pid is the
// one clients see. It stays our child, so that a subreaper above us (containerd's shim, for
// instance) inherits it when we exit and can wait for it, as with runc. For a terminal
// process, ctty is the host pty slave: the shim gets a session of its own with the slave as
// its controlling terminal, so it is signalled when the master is resized (see tty.go). The
// shim lives in the host namespaces ns (see package internal/shim). The pod daemon watches
// it from the start: if it dies, the process dies in the VM.
func spawnShim(ctx context.Context, g *globals, pod *podConn, rec *state.Container, process string, ctty *os.File, ns shim.Namespaces) (state.Process, error) {
	self, err := os.Executable()
	if err != nil {
		return state.Process{}, err
	}
	args := []string{"--root", g.root}
	if g.debug {
		args = append(args, "--debug")
	}
	var extra []*os.File
	if ctty != nil {
		extra = append(extra, ctty)
	}
	podDir := rec.PodDir
	if ns.JoinsMount() {
		// The pod's directory may not be at its path in another mount namespace: the shim
		// reaches it through a descriptor.
		dir, err := os.OpenFile(rec.PodDir, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return state.Process{}, fmt.Errorf("pod directory: %w", err)
		}
		defer dir.Close()
		extra = append(extra, dir)
		podDir = fmt.Sprintf("/proc/self/fd/%d", 2+len(extra))
	}
	// The shim's stdio is closed; what it has to say goes with the pod's other logs.
	args = append(args, "--log", filepath.Join(podDir, shimLog))
	args = append(args, "shim", "--pod-dir", podDir, "--id", rec.ID)
	if ctty != nil {
		args = append(args, "--console-fd", "3")
	}
	if process != "" {
		args = append(args, "--process", process)
	}
	cmd := exec.Command(self, args...)
	cmd.ExtraFiles = extra
	// The shim must not hold the container's stdio: readers would never see EOF.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	cmd.Dir = "/"
	if ctty != nil {
		// Ctty is a descriptor number in the child: ExtraFiles[0] is its fd 3.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 3}
	}
	what := "container " + strconv.Quote(rec.ID)
	if process != "" {
		what = "process " + strconv.Quote(process) + " of " + what
	}
	if err := shim.Start(cmd, ns); err != nil {
		return state.Process{}, fmt.Errorf("start shim for %s: %w", what, err)
	}
	// Our child, not reaped yet: its pid cannot have been reused until we let it go.
	if err := pod.watchStandIn(ctx, rec.ID, process, cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return state.Process{}, fmt.Errorf("shim for %s: %w", what, err)
	}
	p, err := state.ProcessOf(cmd.Process.Pid)
	if err != nil {
		return state.Process{}, fmt.Errorf("shim for %s died at once: %w", what, err)
	}
	cmd.Process.Release()
	return p, nil
}

// podDaemonUp probes the daemon with a short call.
func podDaemonUp(pod *podConn) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := pod.api.Info(ctx, &podapi.Empty{})
	return err == nil
}
