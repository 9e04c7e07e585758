package shimv2

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/mount"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/internal/mounts"
	"github.com/runv-project/runv/internal/poddaemon"
	"github.com/runv-project/runv/logging"
	"github.com/runv-project/runv/supervisor"
)

// Config is the shim's configuration. containerd starts shims with its own environment, so
// it comes from the same variables the runv CLI reads.
type Config struct {
	// Root is runv's state root (RUNV_ROOT, default /run/runv): pod directories are under
	// Root/@shim (podDir), templates and the VM pool are the CLI's.
	Root string
	// Boot is how the pods' VMs are made (the CLI's: templates and the VM pool of Root).
	Boot poddaemon.Boot
	// Debug logs at debug level (containerd's -debug, or RUNV_DEBUG=1).
	Debug bool
}

// ConfigFromEnv reads RUNV_ROOT, RUNV_KERNEL, RUNV_INITRD, RUNV_ACCEL, RUNV_MACHINE,
// RUNV_FACTORY, RUNV_DEFAULT_CPUS, RUNV_DEFAULT_MEMORY (MiB) and RUNV_DEBUG; RUNV_QEMU is
// read where a VM is launched (hypervisor.DefaultQEMU).
func ConfigFromEnv() (Config, error) {
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	root := env("RUNV_ROOT", "/run/runv")
	c := Config{
		Root: root,
		Boot: poddaemon.Boot{
			Base: hypervisor.Config{
				Kernel: env("RUNV_KERNEL", poddaemon.DefaultKernel), Initrd: env("RUNV_INITRD", poddaemon.DefaultInitrd),
				Accel: env("RUNV_ACCEL", hypervisor.AccelAuto), Machine: env("RUNV_MACHINE", hypervisor.MachineMicroVM),
				CPUs: 1, MemoryMiB: 128,
			},
			Factory: os.Getenv("RUNV_FACTORY"), Root: root, TemplateDir: filepath.Join(root, "@templates"),
		},
		Debug: os.Getenv("RUNV_DEBUG") == "1",
	}
	if f := flag.Lookup("debug"); f != nil && f.Value.String() == "true" {
		c.Debug = true
	}
	for _, n := range []struct {
		env string
		dst *int
		min int
	}{{"RUNV_DEFAULT_CPUS", &c.Boot.Base.CPUs, 1}, {"RUNV_DEFAULT_MEMORY", &c.Boot.Base.MemoryMiB, 64}} {
		v := os.Getenv(n.env)
		if v == "" {
			continue
		}
		i, err := strconv.Atoi(v)
		if err != nil || i < n.min {
			return c, fmt.Errorf("%s=%q: want a number of at least %d: %w", n.env, v, n.min, errdefs.ErrInvalidArgument)
		}
		*n.dst = i
	}
	return c, nil
}

// podDir is the directory of a pod of a containerd namespace. Its name is a digest of the
// two: CRI pod ids are 64 characters, and the VM's sockets under the directory must stay
// within the 108 bytes of a unix socket path. The directory's podFile names the pod.
func (c Config) podDir(namespace, pod string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + pod))
	return filepath.Join(c.Root, "@shim", hex.EncodeToString(sum[:8]))
}

// podFile in a pod directory holds "<namespace>/<pod id>".
const podFile = "pod"

// factoryOption reads the runtime options containerd's CRI sends for a handler with an
// options table (runtimeoptions: TypeUrl, ConfigPath): ConfigPath names the factory policy
// of the handler's pods (as RUNV_FACTORY does), so one containerd can offer runv with and
// without a VM pool. Other options are refused.
func factoryOption(opts *anypb.Any) (string, error) {
	if opts == nil || len(opts.GetValue()) == 0 {
		return "", nil
	}
	if !strings.HasSuffix(opts.GetTypeUrl(), "runtimeoptions.v1.Options") {
		return "", fmt.Errorf("runtime options of type %q: runv takes only runtimeoptions (a CRI handler's options.ConfigPath, a factory policy): %w", opts.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	var o runtimeoptions.Options
	if err := proto.Unmarshal(opts.GetValue(), &o); err != nil {
		return "", fmt.Errorf("runtime options: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return o.ConfigPath, nil
}

// ownerFile in a pod directory holds the pid of the shim serving the pod.
const ownerFile = "shim.pid"

// pod is the shim's pod: its supervisor and the factory its VM came from.
type pod struct {
	id, dir string
	sup     *supervisor.Supervisor
	factory factory.Factory
	// cgroup is the pod's host cgroup the shim and its VM joined (nil: none).
	cgroup *podCgroup
}

// podLocked returns the shim's pod, starting it (and booting its VM in the background) for
// the first container; fresh says it did. s.mu is held.
func (s *service) podLocked(ctx context.Context, id, factorySetting, cgroupPath string) (p *pod, fresh bool, err error) {
	if s.pod != nil {
		if s.pod.id != id {
			return nil, false, fmt.Errorf("this runv shim serves pod %q, not %q: %w", s.pod.id, id, errdefs.ErrInvalidArgument)
		}
		return s.pod, false, nil
	}
	if err := s.cfg.Boot.CheckFiles(); err != nil {
		return nil, false, err
	}
	dir := s.cfg.podDir(s.namespace, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("pod %s: %w", id, err)
	}
	os.WriteFile(filepath.Join(dir, podFile), []byte(s.namespace+"/"+id+"\n"), 0o600)
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, false, fmt.Errorf("pod %s: %w", id, err)
	}
	pctx := logging.With(s.ctx, "pod", id)
	start := time.Now()
	boot := s.cfg.Boot
	if factorySetting != "" {
		boot.Factory = factorySetting
	}
	f, size, err := poddaemon.NewFactory(pctx, boot)
	if err != nil {
		os.RemoveAll(dir)
		return nil, false, err
	}
	var cg *podCgroup
	if cgroupPath != "" {
		cg = joinPodCgroup(pctx, cgroupPath)
		if f.Name() != factory.KindCache {
			// A VM the shim launches (cold boot, clone) is born in the pod's cgroup, its
			// memory charged there from the start. One from the pool is moved in once it
			// is handed over (PlaceVM): the shim joins beside the hand-over (a cgroup
			// migration waits for an RCU grace period, ~10 ms here).
			cg.wait()
		}
		// The VM is charged to the pod's cgroup: it must fit under the pod's limit.
		limit := podMemoryLimit(cgroupPath)
		mib, fits := guestMiBUnder(size.MemoryMiB, limit)
		if !fits {
			logging.G(pctx).Warn("the pod's memory limit is below a VM's footprint: the host may OOM-kill the VM",
				"limit_mib", limit>>20, "overhead_mib", vmOverheadMiB, "guest_mib", mib)
		}
		size.MemoryMiB = mib
	}
	defer func() {
		if err != nil && cg != nil {
			cg.leave()
		}
	}()
	cfg := supervisor.Config{
		PodID: id, Dir: dir, Factory: f,
		// The pod's first container sizes the VM (oci.VMSize), never below the defaults.
		VM:           size,
		SizeFromSpec: true,
	}
	if cg != nil {
		// A VM from the pool was started by its holder, not by the shim (and the pool's
		// fallback may launch one before the shim joined).
		cfg.PlaceVM = cg.add
	}
	sup, err := supervisor.New(pctx, cfg)
	if err != nil {
		f.Close()
		os.RemoveAll(dir)
		return nil, false, err
	}
	s.pod = &pod{id: id, dir: dir, sup: sup, factory: f, cgroup: cg}
	logging.G(pctx).Info("pod started", "dir", dir, "duration", time.Since(start))
	return s.pod, true, nil
}

// closePodIfEmpty powers the pod's VM off and removes its directory once no container is
// left.
func (s *service) closePodIfEmpty(ctx context.Context) {
	s.mu.Lock()
	p := s.pod
	if p == nil || len(s.tasks) > 0 {
		s.mu.Unlock()
		return
	}
	s.pod = nil
	s.mu.Unlock()
	p.close(logging.With(context.WithoutCancel(ctx), "pod", p.id))
}

func (p *pod) close(ctx context.Context) {
	log := logging.G(ctx)
	if err := p.sup.Close(ctx); err != nil {
		log.Warn("stop pod", "error", err)
	}
	if err := p.factory.Close(); err != nil {
		log.Warn("close VM factory", "error", err)
	}
	if p.cgroup != nil {
		if err := p.cgroup.leave(); err != nil {
			log.Warn("leave the pod's cgroup", "error", err)
		}
	}
	if err := mounts.RemoveUnmounted(p.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove pod directory", "error", err)
	}
	log.Info("pod stopped")
}

// mountRootfs mounts containerd's snapshot mounts on bundle/rootfs, where root.path points.
func mountRootfs(bundle string, rootfs []*types.Mount) error {
	target := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(target, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create rootfs mount point: %w", err)
	}
	ms := make([]mount.Mount, 0, len(rootfs))
	for _, m := range rootfs {
		ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	if err := mount.All(ms, target); err != nil {
		return fmt.Errorf("mount rootfs on %s: %w", target, err)
	}
	return nil
}

func unmountRootfs(ctx context.Context, bundle string) {
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		logging.G(ctx).Warn("unmount rootfs", "bundle", bundle, "error", err)
	}
}

// setupLogging sends the supervisor's log (slog) where containerd's shim library sends its
// own: the shim's log FIFO, which containerd copies into its log. The library points
// logrus there only after the shim's init, so the writer looks it up on every write.
func setupLogging(debug bool) {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(logrusOutput{}, &slog.HandlerOptions{Level: level})))
}

type logrusOutput struct{}

func (logrusOutput) Write(b []byte) (int, error) {
	var w io.Writer = logrus.StandardLogger().Out
	return w.Write(b)
}
