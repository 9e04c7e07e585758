// Command runv is a runc-compatible OCI runtime whose containers run in lightweight VMs:
// one QEMU VM per pod, our own guest kernel and agent inside, one host daemon per pod.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/logging"
)

// started is when this command's Go code began to run, for the durations --debug logs.
var started = time.Now()

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// exitError makes the process exit with a given code without printing anything more (the
// container's own exit code for `run`, for instance).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	args, preforked, err := preforkedDaemonArgs(os.Args)
	if err != nil {
		// The runv that forked us for a pod daemon did not use us (prefork.go): nothing of
		// ours exists yet.
		os.Exit(0)
	}
	if !preforked {
		args = os.Args
	}
	app := newApp()
	err = app.Run(args)
	releasePreforkedDaemon()
	if err == nil {
		return
	}
	var ee exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	printError(err)
	os.Exit(1)
}

// loggingToStderr records whether the logger writes to stderr (no --log).
var loggingToStderr = true

// printError reports a failed command: a plain line on stderr for people, and a log record
// in --log, where clients such as containerd's runc shim read the reason of a failure.
func printError(err error) {
	if !loggingToStderr {
		logging.G(context.Background()).Error(err.Error())
	}
	fmt.Fprintln(os.Stderr, "runv:", err)
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "runv",
		Usage:   "OCI runtime that runs each pod in its own lightweight virtual machine",
		Version: versionText(),
		Flags:   globalFlags(),
		Before: func(c *cli.Context) error {
			path := c.String("log")
			loggingToStderr = path == ""
			_, err := logging.Setup(logging.Options{Path: path, Format: c.String("log-format"), Debug: c.Bool("debug")})
			return err
		},
		Commands: []*cli.Command{
			specCommand, createCommand, startCommand, runCommand, stateCommand, killCommand,
			deleteCommand, listCommand, daemonCommand, shimCommand, manageCommand,
			execCommand, psCommand, pauseCommand, resumeCommand, eventsCommand, updateCommand,
			featuresCommand, checkpointCommand, restoreCommand,
		},
		// `exec -e A=1,2` sets A to "1,2", as with runc: no splitting of slice flags.
		DisableSliceFlagSeparator: true,
		ExitErrHandler:            func(*cli.Context, error) {}, // main decides how to exit
	}
	app.HideHelpCommand = true
	hideHelpSubcommands(app.Commands)
	return app
}

// hideHelpSubcommands keeps urfave/cli from giving each command a `help` subcommand (alias
// `h`): on a command whose argument is a container ID, `runv state h` would print state's
// help instead of the state of container "h", which runc accepts as an ID. `--help` stays.
// A command with subcommands of its own (manage) keeps its help subcommand.
func hideHelpSubcommands(cmds []*cli.Command) {
	for _, c := range cmds {
		if len(c.Subcommands) == 0 {
			c.HideHelpCommand = true
			continue
		}
		hideHelpSubcommands(c.Subcommands)
	}
}
