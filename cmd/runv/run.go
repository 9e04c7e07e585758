package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
	"github.com/runv-project/runv/logging"
)

var runCommand = &cli.Command{
	Name:      "run",
	Usage:     "create and start a container, attached to this terminal, and return its exit code",
	ArgsUsage: "<container-id>",
	Flags: append([]cli.Flag{
		&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "detach from the container's process"},
		&cli.BoolFlag{Name: "keep", Usage: "do not delete the container after it exits"},
		&cli.BoolFlag{Name: "no-subreaper", Usage: "accepted for runc compatibility; the container's processes are not runv's children"},
	}, createFlags...),
	Action: func(c *cli.Context) error {
		id, g, err := idAndGlobals(c)
		if err != nil {
			return err
		}
		if err := unsupportedFlags(c, "pidfd-socket"); err != nil {
			return err
		}
		detach := c.Bool("detach")
		cr, err := createContainer(c.Context, g, id, createOptions{
			bundle: c.String("bundle"), pidFile: c.String("pid-file"), shim: detach,
			consoleSocket: c.String("console-socket"),
		})
		// The child forked for a pod daemon (prefork.go) goes if the container did not need
		// one (it joined a pod, or could not be created).
		releasePreforkedDaemon()
		if errors.Is(err, errdefs.ErrNotExecutable) {
			// As a shell would: 127 when the program is missing, 126 when it cannot run.
			printError(err)
			return exitError{notExecutableCode(err)}
		}
		if err != nil {
			return err
		}
		defer cr.pod.Close()
		if detach {
			err := startContainer(c.Context, g, id)
			if err != nil {
				// As runc's run -d: a container that could not start is not left behind
				// (its pod, VM and host cgroups go with it).
				if derr := removeContainer(context.Background(), g, id, true, nil); derr != nil {
					return fmt.Errorf("%w (removing the container that did not start also failed: %v)", err, derr)
				}
			}
			return err
		}
		keep := c.Bool("keep")
		code, podEmptied, err := runAttached(c.Context, cr, id, !keep)
		// Closed before the delete waits for an emptied pod's daemon: the daemon's end
		// waits for its clients' connections to close (gRPC's graceful stop), so ours
		// would cost it a round trip to us.
		cr.pod.Close()
		// As runc's run: the container goes when its process is done, or could not start
		// (with --keep it stays, stopped, for inspection and `delete`).
		if !keep || err != nil {
			if derr := removeContainer(context.Background(), g, id, true, podEmptied); err == nil && derr != nil {
				err = derr
			}
		}
		if err != nil {
			return err
		}
		if code != 0 {
			return exitError{code}
		}
		return nil
	},
}

// runAttached starts the container (unless its Create did) and stands in for its process
// until it exits: signals sent to us are forwarded to it, a terminal is driven from ours,
// and its exit code becomes ours. With andDelete the pod daemon deletes the container at
// the exit; podEmptied is then set, to whether that emptied the pod (nil: it did not
// delete it, e.g. a daemon of an older runv).
func runAttached(ctx context.Context, cr *created, id string, andDelete bool) (code int, podEmptied *bool, err error) {
	att := cr.att
	if att == nil {
		att = newAttachment(cr.pod, id, "", catchSignals())
	}
	defer att.Close()
	defer cr.term.Close() // whatever attachForeground did not take over
	if cr.term != nil {
		fg, err := attachForeground(cr.term)
		if err != nil {
			return 0, nil, err
		}
		att.fg = fg
	}
	if !cr.started {
		if err := startInPod(ctx, cr.pod, cr.rec); err != nil {
			return 0, nil, err
		}
	}
	logging.G(ctx).Debug("container started", "container", id)
	warnHooks(ctx, hookPoststart, hooksOf(cr.rec.Spec, hookPoststart), hookState(cr.rec, state.StatusRunning))
	att.deleteAfter = andDelete
	code, err = att.wait(ctx)
	logging.G(ctx).Debug("container exited", "container", id, "exit_code", code, "deleted_in_pod", att.podEmptied != nil)
	return code, att.podEmptied, err
}
