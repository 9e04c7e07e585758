package main

import (
	"slices"
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

// TestPreforkedDaemonGetsItsDescriptorsByNumber: the CLI names a daemon's inherited
// descriptors as an exec'd daemon numbers them (3, 4, ...: startDaemon's extra files); a
// preforked daemon receives them over its socket under other numbers and must give each
// flag the descriptor its value names, whichever flags the command line has, in whatever
// order and form.
func TestPreforkedDaemonGetsItsDescriptorsByNumber(t *testing.T) {
	received := []int{17, 21} // what the CLI sent as its descriptors 3 and 4
	for _, tt := range []struct {
		name     string
		args     []string
		want     []string
		wantFail bool
	}{
		{name: "both, in the CLI's order",
			args: []string{"runv", "containerd", "--pod-id", "p", "--ready-fd", "3", "--vm-fd", "4"},
			want: []string{"runv", "containerd", "--pod-id", "p", "--ready-fd", "17", "--vm-fd", "21"}},
		{name: "the VM's pipe alone",
			args: []string{"runv", "containerd", "--vm-fd", "4"},
			want: []string{"runv", "containerd", "--vm-fd", "21"}},
		{name: "the VM's pipe as the only descriptor",
			args: []string{"runv", "containerd", "--vm-fd", "3"},
			want: []string{"runv", "containerd", "--vm-fd", "17"}},
		{name: "reversed",
			args: []string{"runv", "containerd", "--vm-fd", "3", "--ready-fd", "4"},
			want: []string{"runv", "containerd", "--vm-fd", "17", "--ready-fd", "21"}},
		{name: "written with =",
			args: []string{"runv", "containerd", "--ready-fd=3", "--vm-fd=4"},
			want: []string{"runv", "containerd", "--ready-fd=17", "--vm-fd=21"}},
		{name: "no descriptor flags",
			args: []string{"runv", "containerd", "--pod-id", "3"},
			want: []string{"runv", "containerd", "--pod-id", "3"}},
		{name: "a descriptor that was not sent", args: []string{"runv", "containerd", "--vm-fd", "5"}, wantFail: true},
		{name: "a descriptor below the first", args: []string{"runv", "containerd", "--ready-fd", "2"}, wantFail: true},
		{name: "not a number", args: []string{"runv", "containerd", "--ready-fd", "x"}, wantFail: true},
		{name: "no value", args: []string{"runv", "containerd", "--ready-fd"}, wantFail: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := withReceivedFDs(tt.args, received)
			if tt.wantFail {
				if err == nil {
					t.Fatalf("withReceivedFDs(%q) = %q, want an error", tt.args, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("withReceivedFDs(%q): %v", tt.args, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("withReceivedFDs(%q) = %q, want %q", tt.args, got, tt.want)
			}
		})
	}
}
