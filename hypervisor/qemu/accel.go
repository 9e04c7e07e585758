package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

const (
	// EnvAccelCache overrides the default location of the accelerator verdict cache.
	EnvAccelCache = "RUNV_ACCEL_CACHE"
	// DefaultAccelCache is where the KVM probe's verdict is kept across processes.
	DefaultAccelCache = "/run/runv-accel.json"
	// maxVerdicts bounds the cache file: one verdict per qemu/kernel/initrd combination.
	maxVerdicts = 16
)

// kvmDevice is a variable so that tests can pretend KVM is absent.
var kvmDevice = "/dev/kvm"

// resolveAccel turns cfg.Accel into the accelerator to boot with. auto and kvm consult
// the KVM probe's verdict (probing once, with a deadline, if nothing is cached), because
// a /dev/kvm that opens does not prove that a guest runs under it.
func (l *Launcher) resolveAccel(ctx context.Context, cfg hypervisor.Config) (string, error) {
	if cfg.Accel == hypervisor.AccelTCG {
		return hypervisor.AccelTCG, nil
	}
	_, kvmErr := os.Stat(kvmDevice)
	if kvmErr != nil {
		if cfg.Accel == hypervisor.AccelKVM {
			return "", classify(fmt.Errorf("accelerator kvm requested, but %v: load the kvm module or use --accel tcg", kvmErr),
				hypervisor.ErrAccelUnavailable, errdefs.ErrFailedPrecondition)
		}
		return hypervisor.AccelTCG, nil
	}
	rec, err := l.kvmVerdict(ctx, cfg)
	if err != nil {
		return "", err
	}
	if rec.Accel == hypervisor.AccelKVM {
		return hypervisor.AccelKVM, nil
	}
	if cfg.Accel == hypervisor.AccelKVM {
		return "", classify(fmt.Errorf("accelerator kvm requested, but a guest does not run under KVM on this host (%s; verdict cached in %s, delete it to probe again): use --accel tcg or auto",
			rec.Reason, l.accelCachePath()), hypervisor.ErrAccelUnavailable, errdefs.ErrFailedPrecondition)
	}
	logging.G(ctx).Debug("accel auto: using tcg", "reason", rec.Reason)
	return hypervisor.AccelTCG, nil
}

// accelKey is what a verdict depends on: a new QEMU, kernel or agent (whose probe mode
// answers) or a KVM module appearing must be probed again.
type accelKey struct {
	QEMU        string `json:"qemu"`
	QEMUMtime   int64  `json:"qemuMtime"`
	Kernel      string `json:"kernel"`
	KernelMtime int64  `json:"kernelMtime"`
	Initrd      string `json:"initrd"`
	InitrdMtime int64  `json:"initrdMtime"`
	KVM         bool   `json:"kvm"`
}

// accelRecord is one cached verdict.
type accelRecord struct {
	Key      accelKey  `json:"key"`
	Accel    string    `json:"accel"`
	Reason   string    `json:"reason,omitempty"`
	ProbedAt time.Time `json:"probedAt"`
}

type accelCacheFile struct {
	Verdicts []accelRecord `json:"verdicts"`
}

func keyFor(cfg hypervisor.Config) (accelKey, error) {
	k := accelKey{}
	for _, f := range []struct {
		path  string
		abs   *string
		mtime *int64
	}{{cfg.QEMU, &k.QEMU, &k.QEMUMtime}, {cfg.Kernel, &k.Kernel, &k.KernelMtime}, {cfg.Initrd, &k.Initrd, &k.InitrdMtime}} {
		abs, err := filepath.Abs(f.path)
		if err != nil {
			return k, err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return k, err
		}
		*f.abs, *f.mtime = abs, st.ModTime().UnixNano()
	}
	_, err := os.Stat(kvmDevice)
	k.KVM = err == nil
	return k, nil
}

var (
	// verdicts caches verdicts in memory, by cache file and key, for the process's life.
	verdictsMu sync.Mutex
	verdicts   = map[string]accelRecord{}
	// probing admits one probe at a time in this process (a channel, so waiting honours ctx).
	probing = make(chan struct{}, 1)
)

func memKey(cachePath string, k accelKey) string {
	b, _ := json.Marshal(k)
	return cachePath + "\x00" + string(b)
}

func cachedVerdict(mk string) (accelRecord, bool) {
	verdictsMu.Lock()
	defer verdictsMu.Unlock()
	r, ok := verdicts[mk]
	return r, ok
}

func rememberVerdict(mk string, r accelRecord) {
	verdictsMu.Lock()
	defer verdictsMu.Unlock()
	verdicts[mk] = r
}

func (l *Launcher) accelCachePath() string {
	if l.AccelCache != "" {
		return l.AccelCache
	}
	if p := os.Getenv(EnvAccelCache); p != "" {
		return p
	}
	return DefaultAccelCache
}

// kvmVerdict returns whether a guest boots under KVM: from memory, from the cache file, or
// by probing (once per process and, through a file lock, once across processes).
func (l *Launcher) kvmVerdict(ctx context.Context, cfg hypervisor.Config) (accelRecord, error) {
	log := logging.G(ctx)
	key, err := keyFor(cfg)
	if err != nil {
		return accelRecord{}, fmt.Errorf("accelerator probe: %w", err)
	}
	path := l.accelCachePath()
	mk := memKey(path, key)
	lookup := func() (accelRecord, bool) {
		if r, ok := cachedVerdict(mk); ok {
			return r, true
		}
		if r, ok := readVerdict(path, key); ok {
			rememberVerdict(mk, r)
			return r, true
		}
		return accelRecord{}, false
	}
	if r, ok := lookup(); ok {
		return r, nil
	}
	select {
	case probing <- struct{}{}:
		defer func() { <-probing }()
	case <-ctx.Done():
		return accelRecord{}, fmt.Errorf("waiting for the accelerator probe: %w", ctx.Err())
	}
	// Runtimes starting together should not all boot a probe VM: the first probes, the
	// others wait for the lock and read its verdict.
	unlock := lockFile(ctx, path+".lock", 2*l.probeTimeout()+5*time.Second)
	defer unlock()
	if r, ok := lookup(); ok {
		return r, nil
	}

	start := time.Now()
	ok, reason, err := l.probe(ctx, cfg, hypervisor.AccelKVM, l.probeTimeout())
	if err != nil {
		return accelRecord{}, fmt.Errorf("accelerator probe: %w", err)
	}
	r := accelRecord{Key: key, Accel: hypervisor.AccelTCG, Reason: reason, ProbedAt: time.Now().UTC()}
	if ok {
		r.Accel = hypervisor.AccelKVM
	}
	log.Info("kvm probe", "accel", r.Accel, "reason", reason, "duration", time.Since(start))
	rememberVerdict(mk, r)
	if err := writeVerdict(path, r); err != nil {
		// The verdict still holds for this process; the next one probes again.
		log.Warn("cannot cache the kvm probe's verdict", "path", path, "error", err)
	}
	return r, nil
}

func readCache(path string) accelCacheFile {
	var f accelCacheFile
	b, err := os.ReadFile(path)
	if err == nil {
		// A corrupt cache is as good as none: it is rewritten after the next probe.
		json.Unmarshal(b, &f)
	}
	return f
}

func readVerdict(path string, key accelKey) (accelRecord, bool) {
	for _, r := range readCache(path).Verdicts {
		if r.Key == key {
			return r, true
		}
	}
	return accelRecord{}, false
}

// writeVerdict adds r to the cache file, replacing an older verdict for the same key,
// atomically (temp file + rename) so that readers never see half a file.
func writeVerdict(path string, r accelRecord) error {
	f := readCache(path)
	out := accelCacheFile{Verdicts: []accelRecord{r}}
	for _, old := range f.Verdicts {
		if old.Key != r.Key && len(out.Verdicts) < maxVerdicts {
			out.Verdicts = append(out.Verdicts, old)
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// lockFile takes an exclusive flock on path, polling until ctx ends or wait passes; after
// that it gives up and returns a no-op (probing twice is better than hanging). The lock is
// only an optimisation, so any error degrades to no lock.
func lockFile(ctx context.Context, path string, wait time.Duration) (unlock func()) {
	noop := func() {}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return noop
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return noop
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() } // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return noop
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			f.Close()
			return noop
		}
	}
}
