package holder

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"

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

// Invocation is a holder's whole command line as Binary takes it: one JSON argument, the
// descriptor ReadyFD inherited for its report.
type Invocation struct {
	Config Config
	Boot   Boot
	// ReadyFD is the descriptor of Main's ready (Args.ReadyFD).
	ReadyFD int
	// Debug logs at debug level (the factory daemon's --debug).
	Debug bool
}

// Command is the command line that starts a holder as path, the Binary.
func (inv Invocation) Command(path string) *exec.Cmd {
	arg, _ := json.Marshal(inv) // strings, numbers and booleans: it cannot fail
	return exec.Command(path, string(arg))
}

// MainBinary is Binary's main: its argument (Invocation.Command) decoded, logging set up
// as runv's holder mode does (text, to the holder's log on stderr), then Main.
func MainBinary(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: want one argument, the holder's invocation as JSON (runv's factory daemon starts it), got %d",
			Binary, len(args))
	}
	var inv Invocation
	if err := json.Unmarshal([]byte(args[0]), &inv); err != nil {
		return fmt.Errorf("%s: invocation: %w", Binary, err)
	}
	var ready io.WriteCloser
	if inv.ReadyFD > 0 {
		ready = os.NewFile(uintptr(inv.ReadyFD), "ready")
	}
	if _, err := logging.Setup(logging.Options{Format: "text", Debug: inv.Debug, Info: true}); err != nil {
		if ready != nil {
			fmt.Fprintf(ready, "error: %v\n", err)
			ready.Close()
		}
		return err
	}
	return Main(ctx, inv.Config, inv.Boot, ready)
}

// Main is a holder process (`runv-holder` or `runv manage factory-daemon --hold DIR`,
// started by Factory): it builds the pool's base factory (direct or template) from boot,
// then boots and holds one VM (Run) until the VM is gone or SIGTERM/SIGINT. cfg.Factory is
// set here. Errors before Run are reported on ready too.
func Main(ctx context.Context, cfg Config, boot Boot, ready io.WriteCloser) error {
	fail := func(err error) error {
		if ready != nil {
			fmt.Fprintf(ready, "error: %v\n", err)
			ready.Close()
		}
		return err
	}
	policy, _, err := factory.ParseSetting(boot.Policy)
	if err != nil {
		return fail(fmt.Errorf("holder: %w", err))
	}
	ctx, stop := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
	defer stop()
	f, err := factory.New(ctx, factory.Options{Launcher: &qemu.Launcher{}, Base: boot.Base, TemplateDir: boot.TemplateDir}, policy)
	if err != nil {
		return fail(fmt.Errorf("holder: %w", err))
	}
	defer f.Close()
	cfg.Factory = f
	if err := Run(ctx, cfg, ready); err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	return nil
}
