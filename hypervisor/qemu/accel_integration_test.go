//go:build integration

package qemu

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
	"github.com/runv-project/runv/logging"
)

// On this project's build machines /dev/kvm exists but cannot run a guest faster than TCG:
// auto must notice, fall back to TCG and remember the verdict. The KVM probe races the same
// guest under TCG, so with a deadline far away the verdict still comes as soon as one of
// the two guests reached userspace (or KVM failed), not at the deadline.
func TestAccelAutoFallsBack(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	cfg.Accel = hypervisor.AccelAuto
	if _, err := os.Stat(kvmDevice); err != nil {
		t.Skip("no /dev/kvm: auto is tcg without probing (TestAccelWithoutKVMDevice)")
	}
	cache := filepath.Join(qemutest.Dir(t), "accel.json")
	const deadline = 60 * time.Second
	l := &Launcher{AccelCache: cache, ProbeTimeout: deadline}
	ctx, cancel := context.WithTimeout(testLogger(t), 2*deadline)
	defer cancel()

	start := time.Now()
	accel, err := l.resolveAccel(ctx, withDefaultsValidated(t, cfg))
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto -> %s in %v", accel, took)
	// A TCG boot to the marker takes 0.6-3 s on this machine, loaded or not.
	if took > deadline/3 {
		t.Errorf("the verdict took %v: the probes waited for the deadline (%v) instead of racing", took, deadline)
	}
	key, err := keyFor(withDefaultsValidated(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := readVerdict(cache, key)
	if !ok || rec.Accel != accel || rec.Reason == "" {
		t.Fatalf("cache %s holds %+v (found %v), want verdict %s with a reason", cache, rec, ok, accel)
	}
	t.Logf("cached verdict: %+v", rec)
	if accel == hypervisor.AccelKVM {
		t.Log("KVM runs guests on this host; the fallback path is not exercised")
	}
	assertNoProbeLeft(t, filepath.Dir(cache))

	// Another process (empty memory cache) reads the file instead of probing again.
	verdictsMu.Lock()
	clear(verdicts)
	verdictsMu.Unlock()
	start = time.Now()
	again, err := l.resolveAccel(ctx, withDefaultsValidated(t, cfg))
	if err != nil || again != accel {
		t.Fatalf("second resolve: %s, %v", again, err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("cached resolve took %v", took)
	}

	// And a launch with auto boots with the verdict.
	v := mustLaunch(t, l, cfg)
	if v.Accel() != accel {
		t.Errorf("VM runs with %s, verdict %s", v.Accel(), accel)
	}
}

// Asking for KVM where it cannot run a guest fails clearly within the probe deadline.
func TestAccelKVMUnavailable(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	cfg.Accel = hypervisor.AccelKVM
	l := &Launcher{AccelCache: filepath.Join(qemutest.Dir(t), "accel.json")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	v, err := l.Launch(ctx, cfg)
	took := time.Since(start)
	if err == nil {
		v.Kill()
		if v.Accel() == hypervisor.AccelKVM {
			t.Skip("KVM runs guests on this host")
		}
		t.Fatalf("launch with kvm succeeded with %s", v.Accel())
	}
	t.Logf("%v (after %v)", err, took)
	if !errors.Is(err, hypervisor.ErrAccelUnavailable) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("error is not ErrAccelUnavailable/ErrFailedPrecondition: %v", err)
	}
	if !strings.Contains(err.Error(), "resolve-accel") || !strings.Contains(err.Error(), "--accel tcg") {
		t.Errorf("error does not name the step and the fix: %v", err)
	}
	// The probe runs while other tests boot VMs: allow for a slow machine, not for a hang.
	if took > l.probeTimeout()+5*time.Second {
		t.Errorf("failing took %v", took)
	}
	if pids := qemutest.QEMUsFor(cfg.Dir); len(pids) > 0 {
		t.Errorf("qemu left running: %v", pids)
	}
	assertNoProbeLeft(t, filepath.Dir(l.AccelCache))
}

// assertNoProbeLeft checks that no probe VM runs from, and no probe directory is left in, dir.
func assertNoProbeLeft(t *testing.T, dir string) {
	t.Helper()
	if pids := qemutest.QEMUsFor(dir); len(pids) > 0 {
		t.Errorf("probe VM left running: %v", pids)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "runv-probe-*")); len(left) > 0 {
		t.Errorf("probe directories left: %v", left)
	}
}

// The probe machinery itself, under TCG where the guest does boot: the marker is seen,
// the probe VM is gone afterwards and its directory removed.
func TestProbeSeesMarker(t *testing.T) {
	t.Parallel()
	cfg := withDefaultsValidated(t, vmConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := qemutest.Dir(t)
	l := &Launcher{AccelCache: filepath.Join(dir, "accel.json")}
	start := time.Now()
	ok, reason, err := l.probe(ctx, cfg, hypervisor.AccelTCG, 30*time.Second)
	if err != nil || !ok {
		t.Fatalf("probe under tcg: ok=%v reason=%q err=%v", ok, reason, err)
	}
	t.Logf("tcg probe boot to %s: %v", ProbeMarker, time.Since(start))
	assertNoProbeLeft(t, dir)
}

func withDefaultsValidated(t *testing.T, cfg hypervisor.Config) hypervisor.Config {
	t.Helper()
	cfg = withDefaults(cfg)
	if err := validate(&cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testLogger returns a context whose debug log goes to t.Log.
func testLogger(t *testing.T) context.Context {
	return logging.WithLogger(context.Background(), slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

// The contract with the agent: booted with ProbeParam it prints ProbeMarker. Checked
// under TCG, where the guest boots.
func TestProbeRealAgent(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	cfg.Initrd = qemutest.AgentInitrd(t)
	cfg = withDefaultsValidated(t, cfg)
	dir := qemutest.Dir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	ok, reason, err := (&Launcher{AccelCache: filepath.Join(dir, "accel.json")}).probe(ctx, cfg, hypervisor.AccelTCG, 30*time.Second)
	if err != nil || !ok {
		t.Fatalf("agent %s in probe mode under tcg: ok=%v reason=%q err=%v", cfg.Initrd, ok, reason, err)
	}
	t.Logf("agent probe under tcg: %v", time.Since(start))
	assertNoProbeLeft(t, dir)
}
