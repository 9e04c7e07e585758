package qemu

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/hypervisor"
)

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
	// KVMSlower: the guest under KVM lost the race to the same guest under TCG
	// (raceProbes). That is this host's KVM (the cost of its exits), not the guest's, so
	// the verdict holds for every kernel and initrd booted by the same QEMU (hostVerdict).
	KVMSlower bool `json:"kvmSlower,omitempty"`
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

func (l *Launcher) accelCachePath() string {
	return cmp.Or(l.AccelCache, os.Getenv(EnvAccelCache), DefaultAccelCache)
}

// hostFilesCachePath is where what QEMU needs in its jail is cached (jailfiles.go): beside
// the accelerator's verdict.
func (l *Launcher) hostFilesCachePath() string {
	return filepath.Join(filepath.Dir(l.accelCachePath()), "runv-qemu-files.json")
}

var (
	verdictsMu sync.Mutex
	// verdicts caches verdicts in memory, by cache file and key, for the process's life.
	verdicts = map[string]accelRecord{}
	// probing admits one probe per cache file and key at a time: launches that need the
	// same verdict wait for one probe instead of each booting their own. A channel, so that
	// waiting honours ctx.
	probing = map[string]chan struct{}{}
)

func probeSlot(mk string) chan struct{} {
	verdictsMu.Lock()
	defer verdictsMu.Unlock()
	ch, ok := probing[mk]
	if !ok {
		ch = make(chan struct{}, 1)
		probing[mk] = ch
	}
	return ch
}

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

// hostVerdict returns a verdict of KVMSlower for key's QEMU and KVM device, probed with
// another kernel or initrd: a new build or install then boots without a probe.
func hostVerdict(path string, key accelKey) (accelRecord, bool) {
	for _, r := range readCache(path).Verdicts {
		k := r.Key
		if r.KVMSlower && k.KVM && key.KVM && k.QEMU == key.QEMU && k.QEMUMtime == key.QEMUMtime {
			r.Reason = fmt.Sprintf("%s (probed with %s at %s)", r.Reason, k.Kernel, r.ProbedAt.Format(time.RFC3339))
			r.Key = key
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
