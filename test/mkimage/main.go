// Command mkimage builds a one-layer busybox image tar offline that docker, podman and
// containerd all load: mkimage OUT.tar [NAME[:TAG]] (default runv-test/busybox:latest).
package main

import (
	"fmt"
	"os"

	"github.com/runv-project/runv/test/image"
)

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: mkimage OUT.tar [NAME[:TAG]]")
		os.Exit(2)
	}
	name := ""
	if len(os.Args) == 3 {
		name = os.Args[2]
	}
	b, err := image.Busybox(os.Args[1], name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("image tar: %s  name: %s (containerd: %s)  manifest: %s\n", b.Path, b.Name, b.Qualified, b.Manifest)
}
