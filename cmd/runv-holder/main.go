// Command runv-holder holds one pooled VM for runv's factory daemon (package factory/holder):
// it launches the VM, parks and warms its agent, and follows its owner. The factory daemon
// starts it when it is installed beside runv, and `runv manage factory-daemon --hold`
// otherwise. Its own program because a refill starts one per VM: this one imports the holder,
// the QEMU launcher and the agent's client only, not runv's CLI, gRPC, protobuf or
// libcontainer, and is built without cgo.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/runv-project/runv/factory/holder"
)

// version is set at build time (-ldflags "-X main.version=..."), as runv's: the factory
// daemon uses this program only when both come from one build (holder.VersionFlag).
var version = "0.1.0-dev"

func main() {
	if len(os.Args) == 2 && os.Args[1] == holder.VersionFlag {
		fmt.Println(version)
		return
	}
	if err := holder.MainBinary(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
