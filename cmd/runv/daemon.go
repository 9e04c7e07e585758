package main

import (
	"os"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/internal/poddaemon"
	"github.com/runv-project/runv/logging"
)

// daemonCommand is the per-pod daemon (package internal/poddaemon), started by the first
// `runv create` of a pod. The name and --solo-namespaced flag are runV's.
var daemonCommand = &cli.Command{
	Name:   "containerd",
	Hidden: true,
	Usage:  "serve one pod (internal; started by runv create)",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "solo-namespaced", Usage: "serve a single pod (the only mode)"},
		&cli.StringFlag{Name: "pod-id", Required: true},
		&cli.StringFlag{Name: "pod-dir", Required: true},
		&cli.IntFlag{Name: "ready-fd", Usage: "descriptor on which to report readiness"},
		&cli.IntFlag{Name: "vm-fd", Usage: "descriptor on which the starter tells which pooled VM it fetched for the pod"},
		// The VM size of the pod's first container (oci.VMSize; 0: what the spec does not
		// ask for), known to the runv that starts the daemon: the boot starts at once.
		&cli.IntFlag{Name: "first-cpus", Value: -1, Usage: "vCPUs the pod's first container asks for (-1: size the VM when it arrives)"},
		&cli.IntFlag{Name: "first-memory", Value: -1, Usage: "memory in MiB the pod's first container asks for (-1: size the VM when it arrives)"},
	},
	Action: func(c *cli.Context) error {
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		var ready, prefetched *os.File
		if fd := c.Int("ready-fd"); fd > 0 {
			ready = os.NewFile(uintptr(fd), "ready")
		}
		if fd := c.Int("vm-fd"); fd > 0 {
			// Read in the background while the boot may go on without it (a VM booted
			// directly): QEMU must not inherit it.
			unix.CloseOnExec(fd)
			prefetched = os.NewFile(uintptr(fd), "prefetched-vm")
		}
		// The daemon always logs to its pod directory's daemon.log (its stderr), at info
		// level unless --debug.
		if _, err := logging.Setup(logging.Options{Format: g.logFormat, Debug: g.debug, Info: true}); err != nil {
			return err
		}
		var first *factory.Request
		if cpus, mem := c.Int("first-cpus"), c.Int("first-memory"); cpus >= 0 && mem >= 0 {
			first = &factory.Request{CPUs: cpus, MemoryMiB: mem}
		}
		return poddaemon.Main(c.Context, c.String("pod-id"), c.String("pod-dir"), g.boot(), first, prefetched, ready)
	},
}
