package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/shim"
	"github.com/runv-project/runv/internal/state"
)

// shimCommand is the host process that stands in for one container process (package
// internal/shim).
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
		// A pipe the shim reads until EOF before it looks for its process: `runv create`
		// starts the shim while the container is being created.
		&cli.IntFlag{Name: "gate-fd"},
	},
	Action: func(c *cli.Context) error {
		cfg := shim.Config{PodDir: c.String("pod-dir"), ID: c.String("id"), Process: c.String("process")}
		if fd := c.Int("console-fd"); fd > 0 {
			cfg.Console = os.NewFile(uintptr(fd), "console")
		}
		if fd := c.Int("gate-fd"); fd > 0 {
			cfg.Gate = os.NewFile(uintptr(fd), "gate")
		}
		return exitError{shim.Main(c.Context, cfg)}
	},
}

// spawnShim starts the host process that stands in for a container process: its pid is the
// one clients see. It stays our child, so that a subreaper above us (containerd's shim, for
// instance) inherits it when we exit and can wait for it, as with runc. For a terminal
// process, ctty is the host pty slave: the shim gets a session of its own with the slave as
// its controlling terminal, so it is signalled when the master is resized (see tty.go). The
// shim lives in the host namespaces ns (see package internal/shim). The pod daemon watches
// it from the start: if it dies, the process dies in the VM.
func spawnShim(ctx context.Context, g *globals, pod *podConn, rec *state.Container, process string, ctty *os.File, ns shim.Namespaces) (state.Process, error) {
	s, err := startShim(g, rec, process, ctty, ns, false)
	if err != nil {
		return state.Process{}, err
	}
	p, err := s.register(ctx, pod)
	if err != nil {
		s.abort()
	}
	return p, err
}

// startedShim is a shim that runs but is not yet watched by the pod daemon (register). A
// gated one waits before it looks for its process: it can start (a process start, its
// namespaces, its host cgroup: 20-25 ms) while its container is being created in the guest.
type startedShim struct {
	cmd     *exec.Cmd
	id      string
	process string
	what    string
	// gate is the write end of the shim's --gate-fd pipe: closing it lets the shim go on
	// (nil: not gated).
	gate *os.File
}

// startShim starts a shim for process of rec (see spawnShim), gated or not.
func startShim(g *globals, rec *state.Container, process string, ctty *os.File, ns shim.Namespaces, gated bool) (*startedShim, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
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
			return nil, fmt.Errorf("pod directory: %w", err)
		}
		defer dir.Close()
		extra = append(extra, dir)
		podDir = fmt.Sprintf("/proc/self/fd/%d", 2+len(extra))
	}
	var gateR, gateW *os.File
	if gated {
		if gateR, gateW, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("shim gate: %w", err)
		}
		defer gateR.Close()
		extra = append(extra, gateR)
	}
	// The shim's stdio is closed; what it has to say goes with the pod's other logs.
	args = append(args, "--log", filepath.Join(podDir, shim.Log))
	args = append(args, "shim", "--pod-dir", podDir, "--id", rec.ID)
	if ctty != nil {
		args = append(args, "--console-fd", "3")
	}
	if gated {
		args = append(args, "--gate-fd", strconv.Itoa(2+len(extra)))
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
		if gateW != nil {
			gateW.Close()
		}
		return nil, fmt.Errorf("start shim for %s: %w", what, err)
	}
	return &startedShim{cmd: cmd, id: rec.ID, process: process, what: what, gate: gateW}, nil
}

func (s *startedShim) pid() int { return s.cmd.Process.Pid }

// register has the pod daemon watch the shim (the process must exist there by now) and
// lets a gated shim go on. The shim is then let go: it outlives us.
func (s *startedShim) register(ctx context.Context, pod *podConn) (state.Process, error) {
	if s.gate != nil && s.exited() {
		// Killed while its process was being made (what `kill -9 <pid>` of the stand-in
		// means to a container that exists): no container is published without its
		// stand-in; the create fails and undoes itself.
		return state.Process{}, fmt.Errorf("shim for %s died before its process existed: %w", s.what, errdefs.ErrUnavailable)
	}
	// Our child, not reaped yet: its pid cannot have been reused until we let it go.
	if err := pod.watchStandIn(ctx, s.id, s.process, s.pid()); err != nil {
		return state.Process{}, fmt.Errorf("shim for %s: %w", s.what, err)
	}
	p, err := state.ProcessOf(s.pid())
	if err != nil {
		return state.Process{}, fmt.Errorf("shim for %s died at once: %w", s.what, err)
	}
	if s.gate != nil {
		s.gate.Close()
		s.gate = nil
	}
	s.cmd.Process.Release()
	return p, nil
}

// exited reports whether the shim has exited (it stays unreaped).
func (s *startedShim) exited() bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, s.pid(), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err == nil && info.Signo == int32(unix.SIGCHLD)
}

// abort kills and reaps a shim that was not registered.
func (s *startedShim) abort() {
	if s.gate != nil {
		s.gate.Close()
		s.gate = nil
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
}
