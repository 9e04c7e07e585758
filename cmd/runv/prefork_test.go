package main

import (
	"testing"

	"github.com/urfave/cli/v2"
)

// TestPreforkKnowsTheGlobalFlags: the C constructor finds the command word before the Go
// runtime, with its own list of the global flags that take no value. A boolean flag added to
// globalFlags and not to that list would make it take the command for the flag's value: no
// preforked daemon for `runv --newflag run` (slower, not wrong), and a value flag listed as
// boolean would make it take a value for the command. Each global flag, and urfave/cli's own
// help and version, must be classified as the CLI parses it.
func TestPreforkKnowsTheGlobalFlags(t *testing.T) {
	flags := append(globalFlags(), cli.HelpFlag, cli.VersionFlag)
	for _, f := range flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, name := range f.Names() {
			for _, arg := range []string{"-" + name, "--" + name} {
				if got := preforkTakesNoValue(arg); got != isBool {
					t.Errorf("the constructor takes %s as a flag without a value: %v, the CLI: %v (runv_bool_flag in prefork.go)", arg, got, isBool)
				}
			}
		}
	}
}
