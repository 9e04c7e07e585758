//go:build integration

package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
	"github.com/runv-project/runv/internal/testbuf"
	"github.com/runv-project/runv/logging"
)

func TestLaunchShutdown(t *testing.T) {
	onEachMachine(t, func(t *testing.T, cfg hypervisor.Config) {
		if err := os.WriteFile(filepath.Join(cfg.ShareDir, "hello.txt"), nil, 0o644); err != nil {
			t.Fatal(err)
		}

		start := time.Now()
		v := mustLaunch(t, &Launcher{}, cfg)
		t.Logf("%s: launch -> QMP ready in %v (pid %d)", cfg.Machine, time.Since(start), v.Pid())
		if v.Accel() != hypervisor.AccelTCG {
			t.Errorf("Accel() = %q", v.Accel())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var st status
		if err := v.(*vm).qmp(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
			t.Fatalf("query-status = %+v, %v", st, err)
		}

		ch, err := v.Channels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		if _, err := v.Channels(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("second Channels: %v", err)
		}
		answer, err := roundTrip(ch.Control, "ping 1", 60*time.Second)
		if err != nil || answer != "pong ping 1" {
			t.Fatalf("control port: %q, %v (console: %s)", answer, err, tail(v.ConsoleLog(), 5))
		}
		t.Logf("%s: launch -> guest answered in %v", cfg.Machine, time.Since(start))
		// The share is exported under agentproto.ShareTag.
		if answer, err := roundTrip(ch.Control, "share", 30*time.Second); err != nil || answer != "share hello.txt" {
			t.Errorf("share: %q, %v", answer, err)
		}

		// The test init ignores the power button, so this exercises quit after the deadline.
		sctx, scancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer scancel()
		begin := time.Now()
		if err := v.Shutdown(sctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: shutdown (powerdown ignored, then quit) took %v", cfg.Machine, time.Since(begin))
		assertGone(t, v, cfg.Dir)
		if _, err := os.Stat(v.ConsoleLog()); err != nil {
			t.Errorf("console log: %v", err)
		}
		// Operations on a gone VM say so.
		if _, err := v.Channels(ctx); err == nil {
			t.Error("Channels on an exited VM succeeded")
		}
		if err := v.Shutdown(ctx); err != nil {
			t.Errorf("second Shutdown: %v", err)
		}
	})
}

// A guest that powers itself off ends the VM: Done closes and the sockets go.
func TestGuestPowerOff(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	v := mustLaunch(t, &Launcher{}, cfg)
	ch := mustChannels(t, v)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := roundTrip(ch.Control, "ping", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Control.Write([]byte("poweroff\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
	case <-ctx.Done():
		t.Fatal("guest poweroff did not end the VM")
	}
	assertGone(t, v, cfg.Dir)
	if err := v.(*vm).qmp(ctx, "query-status", nil, nil); !errors.Is(err, hypervisor.ErrVMExited) {
		t.Errorf("qmp after exit: %v, want ErrVMExited", err)
	}
}

// A microvm guest under TCG is told its local APIC timer's frequency instead of
// calibrating it: the calibration, a 100 ms busy wait, disabled the guest's only timer when
// a loaded host descheduled the vCPU at its start, and the guest then hung at its first wait
// on time (docs/reliability.md, "A guest without a timer"). The kernel says which it did
// (apic=verbose), and a sleep in the guest takes its time in the host's.
func TestGuestTimerIsNotCalibrated(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	cfg.KernelParams = []string{"apic=verbose", "loglevel=5"}
	v := mustLaunch(t, &Launcher{}, cfg)
	ch := mustChannels(t, v)
	start := time.Now()
	answer, err := roundTrip(ch.Control, "sleep", 30*time.Second)
	took := time.Since(start)
	if err != nil || answer != "slept" {
		t.Fatalf("a 1 s sleep in the guest: %q, %v after %v (console: %s)", answer, err, took, tail(v.ConsoleLog(), 5))
	}
	if took < time.Second || took > 5*time.Second {
		t.Errorf("a 1 s sleep in the guest took %v of the host's time", took)
	}
	console, err := os.ReadFile(v.ConsoleLog())
	if err != nil {
		t.Fatal(err)
	}
	const given = "lapic timer already calibrated 4000000" // 1 GHz at the kernel's HZ=250
	if !strings.Contains(string(console), given) || strings.Contains(string(console), "calibrating APIC timer") {
		t.Errorf("the guest kernel calibrated its APIC timer, or took another period than QEMU's 1 GHz (want %q on the console):\n%s",
			given, apicLines(string(console)))
	}
}

// apicLines returns the console's lines about the APIC.
func apicLines(console string) string {
	var out []string
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(strings.ToLower(l), "apic") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestHotplugQ35(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	cfg.Machine = hypervisor.MachineQ35
	cfg.CPUs, cfg.MaxCPUs = 1, 2
	cfg.MemoryMiB, cfg.MaxMemoryMiB = 128, 384
	v := mustLaunch(t, &Launcher{}, cfg)
	hp, ok := v.(hypervisor.Hotplugger)
	if !ok {
		t.Fatalf("%T does not implement Hotplugger", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := hp.HotplugCPUs(ctx, 2); err != nil {
		t.Fatal(err)
	}
	var cpus []hotpluggableCPU
	if err := v.(*hotplugVM).qmp(ctx, "query-hotpluggable-cpus", nil, &cpus); err != nil {
		t.Fatal(err)
	}
	for _, c := range cpus {
		if c.QOMPath == "" {
			t.Errorf("vCPU slot %v still free after plugging to 2", c.Props)
		}
	}
	if err := hp.HotplugCPUs(ctx, 2); err != nil {
		t.Errorf("plugging to the current count: %v", err)
	}
	if err := hp.HotplugCPUs(ctx, 3); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("beyond maxcpus: %v", err)
	}

	// 100 MiB more is rounded up to one 128 MiB DIMM.
	if err := hp.HotplugMemory(ctx, 228); err != nil {
		t.Fatal(err)
	}
	var sum memorySummary
	if err := v.(*hotplugVM).qmp(ctx, "query-memory-size-summary", nil, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Plugged != 128<<20 {
		t.Errorf("plugged memory = %d, want 128 MiB", sum.Plugged)
	}
	if err := hp.HotplugMemory(ctx, 384); err != nil {
		t.Errorf("second DIMM: %v", err)
	}
	if err := hp.HotplugMemory(ctx, 512); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("beyond maxmem: %v", err)
	}
	if err := hp.HotplugMemory(ctx, 256); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("shrinking: %v", err)
	}
	if err := v.Kill(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, v, cfg.Dir)
}

func TestMicroVMIsNotHotpluggable(t *testing.T) {
	t.Parallel()
	v := mustLaunch(t, &Launcher{}, vmConfig(t))
	if _, ok := v.(hypervisor.Hotplugger); ok {
		t.Errorf("microvm VM %T claims hot-plug", v)
	}
}

// Each launch step is logged with its duration at debug level.
func TestLaunchLogsSteps(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	var buf testbuf.Buffer
	ctx := logging.WithLogger(context.Background(), slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := (&Launcher{}).Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v.Kill()
	out := buf.String()
	for _, step := range []string{"validate", "resolve-accel", "build-args", "start-process", "connect-qmp", "query-status"} {
		if !regexp.MustCompile(`msg="launch step" vm=` + regexp.QuoteMeta(cfg.ID) + ` step=` + step + ` duration=\S+`).MatchString(out) {
			t.Errorf("step %s not logged:\n%s", step, out)
		}
	}
	t.Logf("log:\n%s", out)
}

// Launch failures are quick, say what to do, and leave no process and no socket.
func TestLaunchFailures(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(t *testing.T, c *hypervisor.Config)
		step    string
		msg     []string
		classes []error
	}{
		{
			name:    "missing kernel",
			mod:     func(_ *testing.T, c *hypervisor.Config) { c.Kernel = "/nonexistent/vmlinux" },
			step:    "validate",
			msg:     []string{"kernel /nonexistent/vmlinux not found", "make kernel install"},
			classes: []error{errdefs.ErrInvalidArgument, fs.ErrNotExist},
		},
		{
			name:    "missing initrd",
			mod:     func(_ *testing.T, c *hypervisor.Config) { c.Initrd = "/nonexistent/initrd.img" },
			step:    "validate",
			msg:     []string{"initrd /nonexistent/initrd.img not found"},
			classes: []error{errdefs.ErrInvalidArgument, fs.ErrNotExist},
		},
		{
			name:    "bad share dir",
			mod:     func(_ *testing.T, c *hypervisor.Config) { c.ShareDir = filepath.Join(c.Dir, "nope") },
			step:    "validate",
			msg:     []string{"share directory", "nope"},
			classes: []error{errdefs.ErrInvalidArgument, fs.ErrNotExist},
		},
		{
			name: "kernel qemu cannot load",
			mod: func(t *testing.T, c *hypervisor.Config) {
				c.Kernel = filepath.Join(c.ShareDir, "garbage")
				if err := os.WriteFile(c.Kernel, []byte("not a kernel"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			step:    "connect-qmp",
			msg:     []string{"qemu exited during start", "exit status 1", "kernel"},
			classes: []error{hypervisor.ErrVMExited},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := vmConfig(t)
			tt.mod(t, &cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			v, err := (&Launcher{}).Launch(ctx, cfg)
			took := time.Since(start)
			if err == nil {
				v.Kill()
				t.Fatal("launch succeeded")
			}
			t.Logf("%v after %v", err, took)
			if took > 5*time.Second {
				t.Errorf("failing took %v", took)
			}
			if !strings.Contains(err.Error(), "launch vm "+cfg.ID+": "+tt.step+": ") {
				t.Errorf("error %q does not name step %q", err, tt.step)
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
			for _, c := range tt.classes {
				if !errors.Is(err, c) {
					t.Errorf("error %q is not %v", err, c)
				}
			}
			if pids := qemutest.QEMUsFor(cfg.Dir); len(pids) > 0 {
				t.Errorf("qemu left running: %v", pids)
			}
			for _, f := range pathsIn(cfg.Dir).transient() {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%s left behind", f)
				}
			}
		})
	}
}

// A context that ends while QEMU starts fails the launch at once and cleans up.
func TestLaunchCanceled(t *testing.T) {
	t.Parallel()
	cfg := vmConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (&Launcher{}).Launch(ctx, cfg); !errors.Is(err, context.Canceled) {
		t.Errorf("launch with a canceled context: %v", err)
	}
	if pids := qemutest.QEMUsFor(cfg.Dir); len(pids) > 0 {
		t.Errorf("qemu left running: %v", pids)
	}
}

// A direct boot saves the code it translated once its guest answered, and the next boot
// of the same kind restores it and runs; a boot with kernel parameters of its own does
// neither.
func TestBootTranslations(t *testing.T) {
	cfg := vmConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if ok, err := savesTranslations(ctx, withDefaults(cfg).QEMU); err != nil || !ok {
		t.Skipf("%s cannot save translations (not runv's QEMU build: make qemu; RUNV_QEMU names it): %v", withDefaults(cfg).QEMU, err)
	}
	dir := t.TempDir()
	l := &Launcher{TranslationsDir: dir}
	ping := func(v hypervisor.VM, ch *hypervisor.Channels, what string) {
		t.Helper()
		if answer, err := roundTrip(ch.Control, what, 60*time.Second); err != nil || answer != "pong "+what {
			t.Fatalf("%s: %q, %v (console: %s)", what, answer, err, tail(v.ConsoleLog(), 5))
		}
	}

	// A boot that never saves leaves nothing: its file has no name until saved.
	unsaved := mustLaunch(t, l, vmConfig(t))
	unsaved.Kill()
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
		t.Errorf("a boot killed before its save left %q", left)
	}

	first := mustLaunch(t, l, cfg)
	ch := mustChannels(t, first)
	ping(first, ch, "ping first")
	if err := first.(*vm).SaveBootTranslations(ctx); err != nil {
		t.Fatal(err)
	}
	ping(first, ch, "ping after the save")
	saved, _ := filepath.Glob(filepath.Join(dir, "*.tb"))
	if len(saved) != 1 {
		t.Fatalf("boot translations files: %q", saved)
	}
	st, err := os.Stat(saved[0])
	if err != nil || st.Size() < 1<<20 {
		t.Fatalf("boot translations: %v, %v", st, err)
	}
	first.Kill()

	second := mustLaunch(t, l, vmConfig(t))
	ping(second, mustChannels(t, second), "ping second")
	log := qemuStderr(second)
	var restored, total int
	if _, err := fmt.Sscanf(afterString(log, "translation snapshot: "), "%d of %d blocks restored", &restored, &total); err != nil || restored == 0 {
		t.Errorf("the second boot restored no translations: %v, qemu.log: %q", err, log)
	}
	t.Logf("second boot: %d of %d blocks restored", restored, total)
	if err := second.(*vm).SaveBootTranslations(ctx); err != nil {
		t.Errorf("a boot that restored is not one that saves: %v", err)
	}

	own := vmConfig(t)
	own.KernelParams = []string{"loglevel=4"}
	third := mustLaunch(t, l, own)
	ping(third, mustChannels(t, third), "ping own params")
	if log := qemuStderr(third); strings.Contains(log, "translation snapshot") {
		t.Errorf("a boot with kernel parameters of its own restored translations: %q", log)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 {
		t.Errorf("translations directory: %q, want the one file", left)
	}
}

// afterString is what follows the first sep in s, or "".
func afterString(s, sep string) string {
	_, after, _ := strings.Cut(s, sep)
	return after
}
