package main

import (
	"context"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// daemonCommand is the per-pod daemon, started by the first `runv create` of a pod. It owns
// the pod's VM and serves the pod API on <pod dir>/namespaced.sock until its last container
// is deleted. The name and --solo-namespaced flag are runV's.
var daemonCommand = &cli.Command{
	Name:   "containerd",
	Hidden: true,
	Usage:  "serve one pod (internal; started by runv create)",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "solo-namespaced", Usage: "serve a single pod (the only mode)"},
		&cli.StringFlag{Name: "pod-id", Required: true},
		&cli.StringFlag{Name: "pod-dir", Required: true},
		&cli.IntFlag{Name: "ready-fd", Usage: "descriptor on which to report readiness"},
	},
	Action: func(c *cli.Context) error {
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		var ready *os.File
		if fd := c.Int("ready-fd"); fd > 0 {
			ready = os.NewFile(uintptr(fd), "ready")
		}
		// The daemon always logs to its pod directory's daemon.log (its stderr), at info
		// level unless --debug.
		if _, err := logging.Setup(logging.Options{Format: g.logFormat, Debug: g.debug, Info: true}); err != nil {
			return err
		}
		f, err := newFactory(c.Context, g)
		if err != nil {
			// Said on the ready pipe too: the CLI quotes it instead of "see daemon.log".
			if ready != nil {
				fmt.Fprintf(ready, "error: %v\n", err)
				ready.Close()
			}
			return err
		}
		defer f.Close()
		cfg := supervisor.Config{
			PodID:   c.String("pod-id"),
			Dir:     c.String("pod-dir"),
			Factory: f,
			// The pod's first container sizes the VM (oci.VMSize), never below the defaults.
			VM:           factory.Request{CPUs: g.cpus, MemoryMiB: g.memoryMiB},
			SizeFromSpec: true,
		}
		if err := supervisor.Serve(c.Context, cfg, ready); err != nil {
			return fmt.Errorf("pod %s: %w", cfg.PodID, err)
		}
		return nil
	},
}

// newFactory builds the pod's VM factory (podvm.Settings.NewFactory). A policy's first entry
// is the pods' default VM size: g.cpus, g.memoryMiB are set from it.
func newFactory(ctx context.Context, g *globals) (factory.Factory, error) {
	vs := g.vmSettings()
	f, err := vs.NewFactory(ctx)
	if err != nil {
		return nil, err
	}
	g.cpus, g.memoryMiB = vs.CPUs, vs.MemoryMiB
	return f, nil
}
