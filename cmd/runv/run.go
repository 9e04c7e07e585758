package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"os"
	"os/signal"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
)

var runCommand = &cli.Command{
	Name:      "run",
	Usage:     "create and start a container, attached to this terminal, and return its exit code",
	ArgsUsage: "<container-id>",
	Flags:     append([]cli.Flag{&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "detach from the container's process"}}, createFlags...),
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		detach := c.Bool("detach")
		cr, err := createContainer(c.Context, g, id, createOptions{bundle: c.String("bundle"), pidFile: c.String("pid-file"), shim: detach})
		if errors.Is(err, errdefs.ErrNotExecutable) {
			// As a shell would: 127 when the program is missing, 126 when it cannot run.
			code := 127
			if strings.Contains(err.Error(), "permission denied") {
				code = 126
			}
			printError(err)
			return exitError{code}
		}
		if err != nil {
			return err
		}
		defer cr.pod.Close()
		if detach {
			return startContainer(c.Context, g, id)
		}
		code, err := runAttached(c.Context, cr, id)
		if err != nil {
			return err
		}
		if err := deleteContainer(context.Background(), g, id, true); err != nil {
			return err
		}
		if code != 0 {
			return exitError{code}
		}
		return nil
	},
}

// runAttached starts the container and stands in for its process until it exits: signals
// sent to us are forwarded to it, and its exit code becomes ours.
func runAttached(ctx context.Context, cr *created, id string) (int, error) {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	defer signal.Stop(sigs)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err := cr.pod.api.Start(sctx, &podapi.ContainerRequest{Id: id})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("start container %q: %w", id, rpcErr(err))
	}
	stop := make(chan struct{})
	defer close(stop)
	go forwardSignals(cr.pod, id, "", sigs, stop)
	w, err := cr.pod.api.Wait(ctx, &podapi.ProcessRequest{Id: id})
	if err != nil {
		return 137, fmt.Errorf("wait for container %q: %w", id, rpcErr(err))
	}
	if w.Error != "" {
		fmt.Fprintf(os.Stderr, "runv: container %q: %s\n", id, w.Error)
	}
	return int(w.ExitCode), nil
}

// forwardSignals relays every signal we receive to a process in the VM, as runc's
// foreground run and shims do. SIGCHLD, SIGPIPE, SIGURG (the Go runtime's preemption signal)
// and SIGWINCH (a terminal resize, not a signal for the process) are not forwarded.
func forwardSignals(pod *podConn, id, process string, sigs <-chan os.Signal, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case s := <-sigs:
			sig, ok := s.(unix.Signal)
			if !ok || sig == unix.SIGCHLD || sig == unix.SIGPIPE || sig == unix.SIGURG || sig == unix.SIGWINCH {
				continue
			}
			ctx, cancel := ctxTimeout(10 * time.Second)
			pod.api.Signal(ctx, &podapi.SignalRequest{Id: id, Process: process, Signal: int32(sig)})
			cancel()
		}
	}
}
