package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
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
	},
	Action: func(c *cli.Context) error {
		id, process := c.String("id"), c.String("process")
		ctx := logging.With(c.Context, "container", id, "process", process)
		sigs := make(chan os.Signal, 64)
		signal.Notify(sigs)
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

// podDaemonUp probes the daemon with a short call.
func podDaemonUp(pod *podConn) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := pod.api.Info(ctx, &podapi.Empty{})
	return err == nil
}
