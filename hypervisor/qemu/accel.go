package qemu

import (
	"context"
	"fmt"
	"os"
	"time"

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
		if r, ok := hostVerdict(path, key); ok {
			rememberVerdict(mk, r)
			return r, true
		}
		return accelRecord{}, false
	}
	if r, ok := lookup(); ok {
		return r, nil
	}
	slot := probeSlot(mk)
	select {
	case slot <- struct{}{}:
		defer func() { <-slot }()
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
	r, err := l.raceProbes(ctx, cfg, l.probeTimeout())
	if err != nil {
		return accelRecord{}, fmt.Errorf("accelerator probe: %w", err)
	}
	r.Key, r.ProbedAt = key, time.Now().UTC()
	log.Info("kvm probe", "accel", r.Accel, "reason", r.Reason, "duration", time.Since(start))
	rememberVerdict(mk, r)
	if err := writeVerdict(path, r); err != nil {
		// The verdict still holds for this process; the next one probes again.
		log.Warn("cannot cache the kvm probe's verdict", "path", path, "error", err)
	}
	return r, nil
}

// raceProbes boots the probe under KVM and, beside it, under TCG, and returns the verdict
// (without its key): kvm if the KVM guest reached userspace first; tcg if it failed, did not
// answer within timeout, or was overtaken by the same guest emulated (KVMSlower). A
// /dev/kvm that runs guests, but slower than emulation (nested virtualisation whose every
// exit costs milliseconds, as on this project's machines), then costs the first pod the
// TCG boot's time instead of the whole deadline; a working KVM answers in a fraction of
// the TCG boot, whose VM is then killed. err is only set when ctx ended or the KVM probe
// could not start.
func (l *Launcher) raceProbes(ctx context.Context, cfg hypervisor.Config, timeout time.Duration) (accelRecord, error) {
	type result struct {
		accel  string
		ok     bool
		reason string
		err    error
		took   time.Duration
	}
	ctx, cancel := context.WithCancel(ctx)
	start := time.Now()
	results := make(chan result, 2)
	for _, a := range []string{hypervisor.AccelKVM, hypervisor.AccelTCG} {
		go func() {
			ok, reason, err := l.probe(ctx, cfg, a, timeout)
			results <- result{accel: a, ok: ok, reason: reason, err: err, took: time.Since(start)}
		}()
	}
	pending := 2
	// Both probes have ended when this returns: a cancelled probe kills and reaps its VM
	// and removes its directory before it answers.
	defer func() {
		cancel()
		for ; pending > 0; pending-- {
			<-results
		}
	}()
	for { // until the KVM probe's answer, at the latest
		r := <-results
		pending--
		if r.accel == hypervisor.AccelKVM {
			switch {
			case r.err != nil:
				return accelRecord{}, r.err
			case r.ok:
				return accelRecord{Accel: hypervisor.AccelKVM, Reason: r.reason}, nil
			default:
				return accelRecord{Accel: hypervisor.AccelTCG, Reason: r.reason}, nil
			}
		}
		if r.ok {
			return accelRecord{Accel: hypervisor.AccelTCG, KVMSlower: true, Reason: fmt.Sprintf(
				"the guest under KVM had not printed %s when the same guest under TCG had, after %v: KVM is slower than emulation on this host",
				ProbeMarker, r.took.Round(time.Millisecond))}, nil
		}
		// An emulated guest that did not boot proves nothing about KVM: its probe decides.
	}
}
