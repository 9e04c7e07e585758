package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/api/podapi"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/internal/state"
)

// pause and resume freeze and thaw the container's cgroup in the VM (libcontainer's
// freezer); the VM itself keeps running, as do the pod's other containers.
var pauseCommand = &cli.Command{
	Name:      "pause",
	Usage:     "suspend all processes of a container",
	ArgsUsage: "<container-id>",
	Action: func(c *cli.Context) error {
		return freeze(c, "pause", func(st string) error {
			// runc pauses created and running containers; anything else is "not running".
			if st != state.StatusCreated && st != state.StatusRunning {
				return errNotRunning
			}
			return nil
		}, func(pod *podConn, id string) error {
			ctx, cancel := ctxTimeout(30 * time.Second)
			defer cancel()
			_, err := pod.api.Pause(ctx, &podapi.ContainerRequest{Id: id})
			return err
		})
	},
}

var resumeCommand = &cli.Command{
	Name:      "resume",
	Usage:     "resume the processes of a paused container",
	ArgsUsage: "<container-id>",
	Action: func(c *cli.Context) error {
		return freeze(c, "resume", func(st string) error {
			if st != state.StatusPaused {
				return errNotPaused
			}
			return nil
		}, func(pod *podConn, id string) error {
			ctx, cancel := ctxTimeout(30 * time.Second)
			defer cancel()
			_, err := pod.api.Resume(ctx, &podapi.ContainerRequest{Id: id})
			return err
		})
	},
}

// freeze runs pause or resume: the pod daemon decides whether the container's status
// allows it; a refusal is then said in runc's words (check), from the status now.
func freeze(c *cli.Context, verb string, check func(status string) error, call func(*podConn, string) error) error {
	id, g, err := idAndGlobals(c)
	if err != nil {
		return err
	}
	rec, err := loadRecord(g.store, id)
	if err != nil {
		return err
	}
	pod, err := dialLive(rec)
	if err != nil {
		// Its pod daemon is gone: the container is stopped.
		return fmt.Errorf("cannot %s container %q: %w", verb, id, check(state.StatusStopped))
	}
	defer pod.Close()
	if err := call(pod, id); err != nil {
		err = rpcErr(err)
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			if now, lerr := liveState(rec); lerr == nil {
				if cerr := check(now.Status); cerr != nil {
					return fmt.Errorf("cannot %s container %q: %w", verb, id, cerr)
				}
			}
		}
		return fmt.Errorf("%s container %q: %w", verb, id, err)
	}
	return nil
}
