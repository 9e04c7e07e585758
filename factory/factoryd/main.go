package factoryd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/factory/holder"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/internal/sockets"
	"github.com/runv-project/runv/logging"
)

// Config is what the factory daemon runs with.
type Config struct {
	// Root is the state root: the daemon serves SocketIn(Root).
	Root string
	// Policy is the --factory setting (factory.ParseSetting); its entries with "cache" set
	// are the pools.
	Policy string
	// CPUs and MemoryMiB size the VMs of an entry that names no size.
	CPUs, MemoryMiB int
	// MaxCPUs and MaxMemoryMiB are the hot-plug room of pooled VMs (0: none, as on microvm).
	MaxCPUs, MaxMemoryMiB int
	// HolderCommand is the command line of the holder process of one VM of the pool of
	// policy entry entry (holder.Main at the other end).
	HolderCommand func(entry factory.Policy, a holder.Args) *exec.Cmd
}

// Main is the factory daemon: it fills a pool for every policy entry with "cache" set and
// serves SocketIn(cfg.Root) until ctx ends or SIGTERM/SIGINT; then the pooled VMs are
// killed (those handed out stay with their pods).
func Main(ctx context.Context, cfg Config) error {
	policy, source, err := factory.ParseSetting(cfg.Policy)
	if err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}
	dir := filepath.Join(cfg.Root, Dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("factory daemon: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	// Nothing of a previous daemon is worth keeping: its pooled VMs died with it, and the
	// VMs it handed out live in their pods' directories. A pooled VM's share may still be
	// mounted in its directory (hypervisor/qemu) if its holder was killed with the daemon.
	poolsDir := filepath.Join(dir, "pools")
	mounts.UnmountUnder(poolsDir)
	os.RemoveAll(poolsDir)

	ctx, stop := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
	defer stop()
	var pools []*Pool
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
		cpus, mem := cfg.CPUs, cfg.MemoryMiB
		if e.CPU > 0 {
			cpus = e.CPU
		}
		if e.Memory > 0 {
			mem = e.Memory
		}
		name := fmt.Sprintf("%s-%dc-%dm", kind, cpus, mem)
		entry := e
		entry.Cache = 0 // the holder boots with the entry's own kind
		hf := &holder.Factory{Kind: kind, Command: func(a holder.Args) *exec.Cmd {
			return cfg.HolderCommand(entry, a)
		}}
		cc := factory.CacheConfig{
			Size: e.Cache, Dir: filepath.Join(poolsDir, name), CPUs: cpus, MemoryMiB: mem,
			MaxCPUs: cfg.MaxCPUs, MaxMemoryMiB: cfg.MaxMemoryMiB, Fallback: Refuse,
		}
		cache, err := factory.NewCache(ctx, hf, cc)
		if err != nil {
			closePools()
			return fmt.Errorf("factory daemon: policy entry %d: %w", i, err)
		}
		pools = append(pools, &Pool{Cache: cache, Status: PoolStatus{
			Name: name, Kind: kind, CPUs: cpus, MemoryMiB: mem, MaxCPUs: cc.MaxCPUs, MaxMemoryMiB: cc.MaxMemoryMiB}})
	}
	if len(pools) == 0 {
		return fmt.Errorf("factory daemon: the factory policy (%s) has no entry with \"cache\" set: pass e.g. --factory '[{\"cache\":2}]': %w",
			source, errdefs.ErrInvalidArgument)
	}
	srv := NewServer(pools)
	defer os.RemoveAll(dir) // the lock file too: the next daemon creates it anew
	defer srv.Close()

	sock := SocketIn(cfg.Root)
	os.Remove(sock) // a predecessor's; the lock says it is gone
	ln, err := sockets.Listen(sock)
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

// lockDir makes sure one factory daemon serves a state root.
func lockDir(dir string) (*os.File, error) {
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
