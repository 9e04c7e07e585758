package holder

import (
	"context"
	"fmt"
	"io"
	"os/signal"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
)

// Boot is how a holder boots its VM: the pool's policy entry (factory.ParseSetting) over
// the factory daemon's boot settings.
type Boot struct {
	Policy      string
	Base        hypervisor.Config
	TemplateDir string
}

// Main is a holder process (`runv manage factory-daemon --hold DIR`, started by Factory):
// it builds the pool's base factory (direct or template) from boot, then boots and holds
// one VM (Run) until the VM is gone or SIGTERM/SIGINT. cfg.Factory is set here. Errors
// before Run are reported on ready too.
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
