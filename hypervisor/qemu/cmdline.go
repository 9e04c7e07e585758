package qemu

import (
	"context"
	"fmt"

	"github.com/runv-project/runv/hypervisor"
)

// CommandLine returns the QEMU binary and arguments a cold boot of cfg runs, exactly as
// Launch would start them, without starting anything. With serialStdio the guest console
// goes to QEMU's stdout instead of Dir/console.log (which QEMU then writes itself, unbounded). It exists for measurements (bench/
// boots the very same machine bare, to compare runv against): a runtime caller uses Launch.
// Like Launch, the caller must start QEMU in a network namespace of its own (CLONE_NEWNET):
// QEMU creates the taps of the VM's NICs (nic.go) where it runs; and it must call
// DisableHugePages first, as Launch does.
func (l *Launcher) CommandLine(ctx context.Context, cfg hypervisor.Config, serialStdio bool) (string, []string, error) {
	cfg = withDefaults(cfg)
	if err := validate(&cfg); err != nil {
		return "", nil, fmt.Errorf("command line of vm %s: %w", cfg.ID, err)
	}
	accel, err := l.resolveAccel(ctx, cfg)
	if err != nil {
		return "", nil, fmt.Errorf("command line of vm %s: %w", cfg.ID, err)
	}
	s := spec{cfg: cfg, accel: accel, nics: NICSlots, serial: "file:" + pathsIn(cfg.Dir).Console}
	if serialStdio {
		s.serial = "stdio"
	}
	if cfg.Machine == hypervisor.MachineMicroVM && accel == hypervisor.AccelTCG {
		if s.tscKHz, err = l.tscKHz(); err != nil {
			return "", nil, fmt.Errorf("command line of vm %s: %w", cfg.ID, err)
		}
	}
	return cfg.QEMU, buildArgs(s), nil
}

// VMFiles are the files of a VM in its directory that a process driving a VM it did not
// launch needs (a pod daemon handed a VM by the factory daemon): the channel sockets to
// dial and the console log to point users at. See the package doc for the layout.
type VMFiles struct {
	Control, Stream, Console string
}

// FilesIn returns the files of the VM whose directory is dir.
func FilesIn(dir string) VMFiles {
	p := pathsIn(dir)
	return VMFiles{Control: p.Control, Stream: p.Stream, Console: p.Console}
}
