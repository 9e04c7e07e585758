// containerd-shim-runv-v2 is runv's containerd runtime v2 shim (io.containerd.runv.v2): one
// process per pod, which is the pod's supervisor (see package shimv2).
package main

import (
	"github.com/containerd/containerd/runtime/v2/shim"

	"github.com/runv-project/runv/shimv2"
)

func main() {
	// The shim waits for its own children (QEMU, logging programs) with os/exec; the
	// library's reaper would steal their exit statuses, and the containers' processes
	// are in the VM, so there are no orphans to adopt.
	shim.Run(shimv2.RuntimeName, shimv2.New, func(c *shim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}
