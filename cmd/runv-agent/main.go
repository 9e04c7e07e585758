// Command runv-agent is the init process (PID 1) of every runv guest VM, and, re-executed
// by libcontainer as `runv-agent init`, the init of every container inside it.
//
// It must be a static binary with cgo (libcontainer's nsenter is C) and seccomp support:
//
//	CGO_ENABLED=1 go build -trimpath -tags "seccomp netgo osusergo" \
//	  -ldflags "-s -w -linkmode external -extldflags -static" -o build/runv-agent ./cmd/runv-agent
//
// and is packed as /init of the guest initramfs by `go run ./initrd -agent build/runv-agent -o OUT`.
package main

import (
	"fmt"
	"os"

	"github.com/runv-project/runv/agent"
)

func main() {
	if agent.IsWarmupNoop(os.Args) {
		return // the program of the warm-up container (agent.WarmupArg)
	}
	if agent.IsContainerInit(os.Args) {
		agent.ContainerInit() // never returns
	}
	if err := agent.Main(); err != nil {
		fmt.Fprintln(os.Stderr, "runv-agent:", err)
		os.Exit(2)
	}
}
