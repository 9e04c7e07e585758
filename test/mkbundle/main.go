// Command mkbundle makes a busybox OCI bundle: mkbundle DIR [ARG...] (default: sh).
package main

import (
	"fmt"
	"os"

	"github.com/runv-project/runv/test/bundle"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mkbundle DIR [ARG...]")
		os.Exit(2)
	}
	if _, err := bundle.Make(os.Args[1], os.Args[2:]...); err != nil {
		fmt.Fprintln(os.Stderr, "mkbundle:", err)
		os.Exit(1)
	}
	fmt.Println("bundle ready:", os.Args[1])
}
