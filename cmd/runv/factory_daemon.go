package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/factoryd"
	"github.com/runv-project/runv/factory/holder"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// Hot-plug room of pooled q35 VMs unless --max-cpus / --max-memory say otherwise: what a
// pod asking for more than the pool's size can be grown to.
const (
	defaultPoolMaxCPUs      = 4
	defaultPoolMaxMemoryMiB = 2048
)

// factoryDaemonCommand is `runv manage factory-daemon`: the pool of ready VMs that pod
// daemons of the cache kind take theirs from (package factory/factoryd). Its
// pools are the --factory policy's entries that have "cache" set, e.g.
// --factory '[{"cache":2}]' or '[{"template":true,"cache":2}]'; pods started with the same
// policy ask it for VMs and boot their own when it is not running.
var factoryDaemonCommand = &cli.Command{
	Name:  "factory-daemon",
	Usage: "keep pools of ready VMs and hand them to pods of the cache kind (--factory '[{\"cache\":N}]')",
	Description: "Runs in the foreground until SIGTERM or SIGINT, serving <root>/@factory/factory.sock. Killing it kills\n" +
		"the pooled VMs; VMs already handed to pods stay with their pods. --status prints the pools and exits.",
	Flags: []cli.Flag{
		&cli.IntFlag{Name: "max-cpus", Usage: "vCPUs a pooled q35 VM can be hot-plugged up to (default " + strconv.Itoa(defaultPoolMaxCPUs) + " on q35; microvm cannot)"},
		&cli.IntFlag{Name: "max-memory", Usage: "MiB a pooled q35 VM can be hot-plugged up to (default " + strconv.Itoa(defaultPoolMaxMemoryMiB) + " on q35)"},
		&cli.BoolFlag{Name: "warm", Value: true, Usage: "run a throwaway container in every pooled VM before it joins the pool, so that under TCG a pod's first container finds the code translated (--warm=false: pool cold VMs)"},
		&cli.BoolFlag{Name: "status", Usage: "print the running factory daemon's pools as JSON and exit"},
		&cli.BoolFlag{Name: "wait", Usage: "with --status: wait until every pool is full first"},
		&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "with --status --wait: give up after this long"},
		// A holder process (internal): holds one pooled VM, its value the holder's
		// invocation (holder.Invocation). See factory/holder.
		&cli.StringFlag{Name: "hold", Hidden: true},
	},
	Action: func(c *cli.Context) error {
		if c.IsSet("hold") {
			return holder.MainBinary(c.Context, []string{c.String("hold")})
		}
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		switch {
		case c.Bool("status"):
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			st, err := factoryd.GetStatus(ctx, factoryd.SocketIn(g.root), c.Bool("wait"))
			if err != nil {
				return err
			}
			out, _ := json.MarshalIndent(st, "", "  ")
			fmt.Println(string(out))
			return nil
		}
		return runFactoryDaemon(c, g)
	},
}

// poolLimits are the hot-plug limits of pooled VMs.
func poolLimits(c *cli.Context, g *globals) (cpus, mem int) {
	if g.machine != hypervisor.MachineQ35 {
		return 0, 0 // microvm has no hot-plug: bigger pods boot directly at their size
	}
	cpus, mem = defaultPoolMaxCPUs, defaultPoolMaxMemoryMiB
	if c.IsSet("max-cpus") {
		cpus = c.Int("max-cpus")
	}
	if c.IsSet("max-memory") {
		mem = c.Int("max-memory")
	}
	return cpus, mem
}

func runFactoryDaemon(c *cli.Context, g *globals) error {
	if _, err := logging.Setup(logging.Options{Path: g.logPath, Format: g.logFormat, Debug: g.debug, Info: true}); err != nil {
		return err
	}
	if err := g.checkBootFiles(); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}
	maxCPUs, maxMem := poolLimits(c, g)
	// The holder's own binary beside runv starts for a fraction of runv's CPU, once per
	// refill (holder.Binary); runv itself holds VMs where it is not installed, or is of
	// another build.
	holderCommand := func(inv holder.Invocation) *exec.Cmd {
		return inv.Command(self, "manage", "factory-daemon", "--hold")
	}
	if bin, err := holder.BinaryBeside(c.Context, filepath.Dir(self), version); err != nil {
		logging.G(c.Context).Info("pooled VMs are held by runv itself", "reason", err)
	} else {
		holderCommand = func(inv holder.Invocation) *exec.Cmd { return inv.Command(bin) }
	}
	return factoryd.Main(c.Context, factoryd.Config{
		Root: g.root, Policy: g.factory, CPUs: g.cpus, MemoryMiB: g.memoryMiB, MaxCPUs: maxCPUs, MaxMemoryMiB: maxMem,
		HolderCommand: func(entry factory.Policy, a holder.Args) *exec.Cmd {
			return holderCommand(holderInvocation(g, entry, a, maxCPUs, maxMem, c.Bool("warm")))
		},
	})
}

// holderInvocation is what the holder of pooled VM a is told: the VM, the pool's policy
// entry as its --factory, over the VMs' kernel, initrd, accelerator, machine and default
// size, with q35's hot-plug room.
func holderInvocation(g *globals, entry factory.Policy, a holder.Args, maxCPUs, maxMem int, warm bool) holder.Invocation {
	policy, _ := json.Marshal([]factory.Policy{entry})
	base := g.vmConfig()
	if g.machine == hypervisor.MachineQ35 {
		base.MaxCPUs, base.MaxMemoryMiB = maxCPUs, maxMem
	}
	return holder.Invocation{
		Config: holder.Config{ID: a.ID, Dir: a.Dir, ShareDir: a.ShareDir, CPUs: a.CPUs, MemoryMiB: a.MemoryMiB,
			Parent: a.Parent, Warm: warm},
		Boot:    holder.Boot{Policy: string(policy), Base: base, TemplateDir: g.templateDir()},
		ReadyFD: a.ReadyFD, Debug: g.debug,
	}
}
