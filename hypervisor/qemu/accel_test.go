package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runv-project/runv/hypervisor"
)

// Without /dev/kvm there is nothing to probe: auto is TCG at once, kvm is an error.
// Not parallel: it swaps kvmDevice.
func TestAccelWithoutKVMDevice(t *testing.T) {
	old := kvmDevice
	kvmDevice = "/nonexistent/kvm"
	defer func() { kvmDevice = old }()
	cache := filepath.Join(t.TempDir(), "accel.json")
	l := &Launcher{AccelCache: cache}
	cfg := hypervisor.Config{Accel: hypervisor.AccelAuto}
	if a, err := l.resolveAccel(context.Background(), cfg); err != nil || a != hypervisor.AccelTCG {
		t.Errorf("auto: %s, %v", a, err)
	}
	cfg.Accel = hypervisor.AccelKVM
	_, err := l.resolveAccel(context.Background(), cfg)
	if !errors.Is(err, hypervisor.ErrAccelUnavailable) || !strings.Contains(err.Error(), "/nonexistent/kvm") {
		t.Errorf("kvm: %v", err)
	}
	if _, err := os.Stat(cache); err == nil {
		t.Error("a verdict was cached although nothing was probed")
	}
}

func TestVerdictCacheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "accel.json")
	key := func(i int) accelKey { return accelKey{QEMU: "/q", Kernel: "/k", KernelMtime: int64(i), KVM: true} }
	if _, ok := readVerdict(path, key(0)); ok {
		t.Fatal("verdict in a missing file")
	}
	for i := 0; i < maxVerdicts+5; i++ {
		if err := writeVerdict(path, accelRecord{Key: key(i), Accel: hypervisor.AccelTCG, Reason: "r"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeVerdict(path, accelRecord{Key: key(maxVerdicts + 4), Accel: hypervisor.AccelKVM}); err != nil {
		t.Fatal(err)
	}
	f := readCache(path)
	if len(f.Verdicts) != maxVerdicts {
		t.Errorf("%d verdicts kept, want %d", len(f.Verdicts), maxVerdicts)
	}
	if r, ok := readVerdict(path, key(maxVerdicts+4)); !ok || r.Accel != hypervisor.AccelKVM {
		t.Errorf("replaced verdict: %+v %v", r, ok)
	}
	if _, ok := readVerdict(path, key(0)); ok {
		t.Error("oldest verdict not evicted")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	// A corrupt cache counts as empty and is replaced.
	os.WriteFile(path, []byte("{garbage"), 0o644)
	if _, ok := readVerdict(path, key(1)); ok {
		t.Error("verdict read from a corrupt file")
	}
	if err := writeVerdict(path, accelRecord{Key: key(1), Accel: hypervisor.AccelTCG}); err != nil {
		t.Fatal(err)
	}
	if _, ok := readVerdict(path, key(1)); !ok {
		t.Error("verdict not written over a corrupt file")
	}
}

func TestAccelCachePath(t *testing.T) {
	t.Setenv(EnvAccelCache, "/x/env.json")
	if p := (&Launcher{}).accelCachePath(); p != "/x/env.json" {
		t.Errorf("env: %s", p)
	}
	if p := (&Launcher{AccelCache: "/x/field.json"}).accelCachePath(); p != "/x/field.json" {
		t.Errorf("field: %s", p)
	}
	t.Setenv(EnvAccelCache, "")
	if p := (&Launcher{}).accelCachePath(); p != DefaultAccelCache {
		t.Errorf("default: %s", p)
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// A verdict that KVM lost the race to TCG is the host's: another kernel or initrd booted by
// the same QEMU takes it without probing. Other verdicts stay per kernel and initrd. The
// "QEMU" here is a file that cannot run, so a probe fails the lookup.
// Not parallel: it swaps kvmDevice.
func TestHostWideVerdict(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old := kvmDevice
	kvmDevice = file("kvm")
	defer func() { kvmDevice = old }()
	probed := hypervisor.Config{QEMU: file("qemu"), Kernel: file("vmlinux-1"), Initrd: file("initrd-1")}
	fresh := hypervisor.Config{QEMU: probed.QEMU, Kernel: file("vmlinux-2"), Initrd: file("initrd-2")}
	otherQEMU := hypervisor.Config{QEMU: file("qemu-2"), Kernel: fresh.Kernel, Initrd: fresh.Initrd}
	probedKey, err := keyFor(probed)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		stored accelRecord
		cfg    hypervisor.Config
		shared bool
	}{
		{"KVM slower, another kernel and initrd", accelRecord{Accel: hypervisor.AccelTCG, KVMSlower: true, Reason: "slower"}, fresh, true},
		{"KVM slower, another QEMU", accelRecord{Accel: hypervisor.AccelTCG, KVMSlower: true, Reason: "slower"}, otherQEMU, false},
		{"no answer from KVM", accelRecord{Accel: hypervisor.AccelTCG, Reason: "probe VM exited"}, fresh, false},
		{"KVM works", accelRecord{Accel: hypervisor.AccelKVM, Reason: "guest booted"}, fresh, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &Launcher{AccelCache: filepath.Join(t.TempDir(), "accel.json")}
			rec := tc.stored
			rec.Key = probedKey
			if err := writeVerdict(l.AccelCache, rec); err != nil {
				t.Fatal(err)
			}
			got, err := l.kvmVerdict(context.Background(), tc.cfg)
			if !tc.shared {
				if err == nil {
					t.Fatalf("took %+v without probing", got)
				}
				return
			}
			if err != nil || got.Accel != hypervisor.AccelTCG || !strings.Contains(got.Reason, "slower") || !strings.Contains(got.Reason, probed.Kernel) {
				t.Fatalf("verdict %+v, %v: want tcg, the stored reason and the kernel it was probed with", got, err)
			}
		})
	}
}
