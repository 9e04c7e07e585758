package holder

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/logging"
)

// Boot is how a holder boots its VM: the pool's policy entry (factory.ParseSetting) over
// the factory daemon's boot settings.
type Boot struct {
	Policy      string
	Base        hypervisor.Config
	TemplateDir string
}

// Binary is the holder's own program, installed beside runv: a holder started as it rather
// than as `runv manage factory-daemon --hold` loads none of runv's CLI, gRPC, protobuf or
// libcontainer packages, and starts with a fraction of runv's page faults (a pooled VM's
// refill starts one holder; docs/performance.md, "The holder's own binary, stop 19").
const Binary = "runv-holder"

// VersionFlag, Binary's only argument other than an Invocation, makes it print its build's
// version and exit: the factory daemon starts Binary only when that is its own version, so
// that an Invocation is never read by a holder of another build (whose decoder would drop
// the fields it does not know).
const VersionFlag = "--version"

// BinaryBeside returns the path of Binary installed in dir (beside runv) when it is of
// runv's build version want; otherwise an error that says why runv itself holds the VMs.
func BinaryBeside(ctx context.Context, dir, want string) (string, error) {
	bin := filepath.Join(dir, Binary)
	if err := unix.Access(bin, unix.X_OK); err != nil {
		return "", fmt.Errorf("%s: %w", bin, err)
	}
	ctx, cancel := context.WithTimeout(ctx, binaryVersionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, VersionFlag).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", bin, VersionFlag, err)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		return "", fmt.Errorf("%s is version %q, runv is %q: install both from one build (make install)", bin, got, want)
	}
	return bin, nil
}

// binaryVersionTimeout bounds BinaryBeside's run of Binary: a static binary that prints
// a line, ~2 ms; a hung one must not hold the factory daemon's start.
const binaryVersionTimeout = 5 * time.Second

// Invocation is all a holder process is told: the factory daemon encodes it as one JSON
// argument (Command), which Binary takes alone and runv as `manage factory-daemon --hold`'s
// value, and both hand to MainBinary; the descriptor ReadyFD is inherited for its report.
type Invocation struct {
	Config Config
	Boot   Boot
	// ReadyFD is the descriptor of Main's ready (Args.ReadyFD).
	ReadyFD int
	// Debug logs at debug level (the factory daemon's --debug).
	Debug bool
}

// Command is the command line that starts a holder as the program at path: its arguments
// before, then the invocation as one JSON argument.
func (inv Invocation) Command(path string, before ...string) *exec.Cmd {
	arg, _ := json.Marshal(inv) // strings, numbers and booleans: it cannot fail
	return exec.Command(path, append(before, string(arg))...)
}

// MainBinary is a holder process's main, Binary's or runv's: args is the invocation
// (Invocation.Command) alone, decoded, logging set up (text, to the holder's log on
// stderr), then Main.
func MainBinary(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("holder: want one argument, the holder's invocation as JSON (runv's factory daemon starts it), got %d",
			len(args))
	}
	var inv Invocation
	if err := json.Unmarshal([]byte(args[0]), &inv); err != nil {
		return fmt.Errorf("holder: invocation: %w", err)
	}
	var ready io.WriteCloser
	if inv.ReadyFD > 0 {
		ready = os.NewFile(uintptr(inv.ReadyFD), "ready")
	}
	if _, err := logging.Setup(logging.Options{Format: "text", Debug: inv.Debug, Info: true}); err != nil {
		return reportFailure(ready, err)
	}
	return Main(ctx, inv.Config, inv.Boot, ready)
}

// reportFailure reports err, a holder's failure before its VM runs, on ready (when it has
// one: the factory daemon reads that line) and returns it.
func reportFailure(ready io.WriteCloser, err error) error {
	if ready != nil {
		fmt.Fprintf(ready, "error: %v\n", err)
		ready.Close()
	}
	return err
}

// Main is a holder process (`runv-holder` or `runv manage factory-daemon --hold`, started by
// Factory): it builds the pool's base factory (direct or template) from boot, then boots and
// holds one VM (Run) until the VM is gone or SIGTERM/SIGINT. cfg.Factory is set here. Errors
// before Run are reported on ready too.
func Main(ctx context.Context, cfg Config, boot Boot, ready io.WriteCloser) error {
	policy, _, err := factory.ParseSetting(boot.Policy)
	if err != nil {
		return reportFailure(ready, fmt.Errorf("holder: %w", err))
	}
	ctx, stop := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
	defer stop()
	f, err := factory.New(ctx, factory.Options{Launcher: &qemu.Launcher{}, Base: boot.Base, TemplateDir: boot.TemplateDir}, policy)
	if err != nil {
		return reportFailure(ready, fmt.Errorf("holder: %w", err))
	}
	defer f.Close()
	cfg.Factory = f
	if err := Run(ctx, cfg, ready); err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	return nil
}
