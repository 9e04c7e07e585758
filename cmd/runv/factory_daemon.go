package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/cachesrv"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu"
	"github.com/runv-project/runv/logging"
)

// Hot-plug room of pooled q35 VMs unless --max-cpus / --max-memory say otherwise: what a
// pod asking for more than the pool's size can be grown to.
const (
	defaultPoolMaxCPUs      = 4
	defaultPoolMaxMemoryMiB = 2048
)

// factoryDaemonCommand is `runv manage factory-daemon`: the pool of ready VMs that pod
// daemons of the cache kind take theirs from (factory/cachesrv explains the design). Its
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
		// A holder process (internal): holds one pooled VM. See factory/cachesrv.
		&cli.StringFlag{Name: "hold", Hidden: true},
		&cli.StringFlag{Name: "hold-id", Hidden: true},
		&cli.StringFlag{Name: "hold-share", Hidden: true},
		&cli.IntFlag{Name: "hold-cpus", Hidden: true},
		&cli.IntFlag{Name: "hold-memory", Hidden: true},
		&cli.IntFlag{Name: "hold-parent", Hidden: true},
		&cli.BoolFlag{Name: "hold-warm", Hidden: true},
		&cli.IntFlag{Name: "ready-fd", Hidden: true},
	},
	Action: func(c *cli.Context) error {
		g, err := globalsFrom(c)
		if err != nil {
			return err
		}
		switch {
		case c.IsSet("hold"):
			return runHolder(c, g)
		case c.Bool("status"):
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			st, err := cachesrv.GetStatus(ctx, cachesrv.SocketIn(g.root), c.Bool("wait"))
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
	policy, source, err := factory.ParseSetting(g.factory)
	if err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}
	maxCPUs, maxMem := poolLimits(c, g)
	dir := filepath.Join(g.root, cachesrv.Dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}
	lock, err := lockFactoryDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	// Nothing of a previous daemon is worth keeping: its pooled VMs died with it, and the
	// VMs it handed out live in their pods' directories.
	poolsDir := filepath.Join(dir, "pools")
	os.RemoveAll(poolsDir)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}

	ctx, stop := signal.NotifyContext(c.Context, unix.SIGTERM, unix.SIGINT)
	defer stop()
	var pools []*cachesrv.Pool
	closePools := func() {
		for _, p := range pools {
			p.Cache.Close()
		}
	}
	for i, e := range policy {
		if e.Cache == 0 {
			continue
		}
		kind := factory.KindDirect
		if e.Template {
			kind = factory.KindTemplate
		}
		cpus, mem := g.cpus, g.memoryMiB
		if e.CPU > 0 {
			cpus = e.CPU
		}
		if e.Memory > 0 {
			mem = e.Memory
		}
		name := fmt.Sprintf("%s-%dc-%dm", kind, cpus, mem)
		entry := e
		entry.Cache = 0 // the holder boots with the entry's own kind
		hf := &cachesrv.HolderFactory{Kind: kind, Command: func(a cachesrv.HolderArgs) *exec.Cmd {
			return holderCommand(self, g, entry, maxCPUs, maxMem, c.Bool("warm"), a)
		}}
		cc := factory.CacheConfig{
			Size: e.Cache, Dir: filepath.Join(poolsDir, name), CPUs: cpus, MemoryMiB: mem,
			MaxCPUs: maxCPUs, MaxMemoryMiB: maxMem, Fallback: cachesrv.Refuse,
		}
		cache, err := factory.NewCache(ctx, hf, cc)
		if err != nil {
			closePools()
			return fmt.Errorf("factory daemon: policy entry %d: %w", i, err)
		}
		pools = append(pools, &cachesrv.Pool{Cache: cache, Status: cachesrv.PoolStatus{
			Name: name, Kind: kind, CPUs: cpus, MemoryMiB: mem, MaxCPUs: cc.MaxCPUs, MaxMemoryMiB: cc.MaxMemoryMiB}})
	}
	if len(pools) == 0 {
		return fmt.Errorf("factory daemon: the factory policy (%s) has no entry with \"cache\" set: pass e.g. --factory '[{\"cache\":2}]': %w",
			source, errdefs.ErrInvalidArgument)
	}
	srv := cachesrv.NewServer(pools)
	defer os.RemoveAll(dir) // the lock file too: the next daemon creates it anew
	defer srv.Close()

	sock := cachesrv.SocketIn(g.root)
	os.Remove(sock) // a predecessor's; the lock says it is gone
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	logging.G(ctx).Info("factory daemon serving", "socket", sock, "policy", source, "pools", len(pools))

	<-ctx.Done()
	logging.G(ctx).Info("factory daemon stopping: killing the pooled VMs")
	ln.Close()
	<-served
	return nil
}

// lockFactoryDir makes sure one factory daemon serves a state root.
func lockFactoryDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("factory daemon: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("a factory daemon already serves %s: %w", dir, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("factory daemon: lock %s: %w", dir, err)
	}
	return f, nil
}

// holderCommand is the command line of the holder of one pooled VM: this runv, with the
// daemon's global options and the pool's policy entry, in holder mode.
func holderCommand(self string, g *globals, entry factory.Policy, maxCPUs, maxMem int, warm bool, a cachesrv.HolderArgs) *exec.Cmd {
	pol, _ := json.Marshal([]factory.Policy{entry})
	args := []string{
		"--root", g.root, "--kernel", g.kernel, "--initrd", g.initrd, "--accel", g.accel, "--machine", g.machine,
		"--default_cpus", strconv.Itoa(g.cpus), "--default_memory", strconv.Itoa(g.memoryMiB),
		"--factory", string(pol), "--log-format", "text",
	}
	if g.debug {
		args = append(args, "--debug")
	}
	args = append(args, "manage", "factory-daemon",
		"--hold", a.Dir, "--hold-id", a.ID, "--hold-share", a.ShareDir,
		"--hold-cpus", strconv.Itoa(a.CPUs), "--hold-memory", strconv.Itoa(a.MemoryMiB),
		"--hold-parent", strconv.Itoa(a.Parent), "--ready-fd", strconv.Itoa(a.ReadyFD),
		"--max-cpus", strconv.Itoa(maxCPUs), "--max-memory", strconv.Itoa(maxMem),
		"--hold-warm="+strconv.FormatBool(warm))
	return exec.Command(self, args...)
}

// runHolder is a holder process: it boots one VM with the policy entry's kind and holds it.
func runHolder(c *cli.Context, g *globals) error {
	if _, err := logging.Setup(logging.Options{Format: g.logFormat, Debug: g.debug, Info: true}); err != nil {
		return err
	}
	var ready *os.File
	if fd := c.Int("ready-fd"); fd > 0 {
		ready = os.NewFile(uintptr(fd), "ready")
	}
	fail := func(err error) error {
		if ready != nil {
			fmt.Fprintf(ready, "error: %v\n", err)
			ready.Close()
		}
		return err
	}
	policy, _, err := factory.ParseSetting(g.factory)
	if err != nil {
		return fail(fmt.Errorf("holder: %w", err))
	}
	base := hypervisor.Config{
		Kernel: g.kernel, Initrd: g.initrd, Accel: g.accel, Machine: g.machine,
		CPUs: g.cpus, MemoryMiB: g.memoryMiB,
	}
	if maxCPUs, maxMem := c.Int("max-cpus"), c.Int("max-memory"); g.machine == hypervisor.MachineQ35 {
		base.MaxCPUs, base.MaxMemoryMiB = maxCPUs, maxMem
	}
	ctx, stop := signal.NotifyContext(c.Context, unix.SIGTERM, unix.SIGINT)
	defer stop()
	f, err := factory.New(ctx, factory.Options{Launcher: &qemu.Launcher{}, Base: base, TemplateDir: g.templateDir()}, policy)
	if err != nil {
		return fail(fmt.Errorf("holder: %w", err))
	}
	defer f.Close()
	err = cachesrv.RunHolder(ctx, cachesrv.HolderConfig{
		ID: c.String("hold-id"), Dir: c.String("hold"), ShareDir: c.String("hold-share"),
		CPUs: c.Int("hold-cpus"), MemoryMiB: c.Int("hold-memory"), Factory: f, Parent: c.Int("hold-parent"),
		Warm: c.Bool("hold-warm"),
	}, ready)
	if err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	return nil
}
