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
	},
	Action: func(c *cli.Context) error {
		cfg := shim.Config{PodDir: c.String("pod-dir"), ID: c.String("id"), Process: c.String("process")}
		if fd := c.Int("console-fd"); fd > 0 {
			cfg.Console = os.NewFile(uintptr(fd), "console")
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
	args = append(args, "--log", filepath.Join(podDir, shim.Log))
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
