package main

import (
	"runtime"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ociVersion is the version of the OCI runtime spec runv implements: the one its spec
// package (and the guest's libcontainer) is built against.
var ociVersion = specs.Version

// versionText is what `runv --version` prints after "runv version ", in runc's layout:
//
//	runv version 0.1.0
//	spec: 1.3.0
//	go: go1.26.8
func versionText() string {
	return strings.Join([]string{version, "spec: " + ociVersion, "go: " + runtime.Version()}, "\n")
}
