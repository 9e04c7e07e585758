package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/errdefs"
)

// checkpoint and restore exist so that clients get a clear answer rather than "no help
// topic": runc does them with CRIU on host processes, and runv's processes are in a VM.
var checkpointCommand = &cli.Command{
	Name:            "checkpoint",
	Usage:           "not supported: checkpoint a running container (runc uses CRIU on host processes)",
	ArgsUsage:       "<container-id>",
	SkipFlagParsing: true,
	Action:          func(*cli.Context) error { return notSupported("checkpoint") },
}

var restoreCommand = &cli.Command{
	Name:            "restore",
	Usage:           "not supported: restore a container from a checkpoint",
	ArgsUsage:       "<container-id>",
	SkipFlagParsing: true,
	Action:          func(*cli.Context) error { return notSupported("restore") },
}

func notSupported(cmd string) error {
	return fmt.Errorf("%s is not supported by runv: the container's processes run in a VM, where CRIU cannot reach them from the host: %w", cmd, errdefs.ErrNotImplemented)
}
