//go:build integration

package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/hypervisor/qemu/qemutest"
)

func TestTemplateRefusesBadInput(t *testing.T) {
	qemutest.RequireVM(t)
	cfg := vmConfig(t)
	dir := shmDir(t)
	snap := hypervisor.Snapshot{Memory: filepath.Join(dir, "memory"), State: filepath.Join(dir, "state")}
	l := &Launcher{}
	ctx := context.Background()
	park := func(context.Context, *hypervisor.Channels, hypervisor.Park) error { return nil }

	bad := cfg
	bad.KernelParams = []string{"nolapic_timer"}
	if _, err := l.CreateTemplate(ctx, bad, snap, park); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "nolapic_timer") {
		t.Errorf("nolapic_timer template: %v", err)
	}
	if _, err := l.CreateTemplate(ctx, cfg, snap, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("template without park: %v", err)
	}
	// An existing RAM file is never written into: clones may map it.
	if err := os.WriteFile(snap.Memory, []byte("in use"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateTemplate(ctx, cfg, snap, park); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("existing memory file: %v", err)
	}
	if b, _ := os.ReadFile(snap.Memory); string(b) != "in use" {
		t.Errorf("existing memory file was modified: %q", b)
	}
	// Nor an existing translations file: clones may be reading it.
	withTranslations := snap
	withTranslations.Memory = filepath.Join(dir, "memory2")
	withTranslations.Translations = filepath.Join(dir, "translations")
	if err := os.WriteFile(withTranslations.Translations, []byte("in use"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateTemplate(ctx, cfg, withTranslations, park); !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), "translations") {
		t.Errorf("existing translations file: %v", err)
	}
	if b, _ := os.ReadFile(withTranslations.Translations); string(b) != "in use" {
		t.Errorf("existing translations file was modified: %q", b)
	}
	if _, err := os.Stat(withTranslations.Memory); err == nil {
		t.Errorf("a refused template left its memory file %s", withTranslations.Memory)
	}
	// A clone of a template of another size is refused before QEMU is started.
	if err := os.Truncate(snap.Memory, 256<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snap.State, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	snap.MachineType, snap.Accel = "microvm", hypervisor.AccelTCG
	if _, err := l.Clone(ctx, cfg, snap); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "256 MiB") {
		t.Errorf("clone of another size: %v", err)
	}
}

// shmDir is a directory on tmpfs for template files, removed after the test.
func shmDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "runv-tmpl-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// pingPark parks the test init: one round trip proves it is up and serving. The launcher
// keeps the connection until the template is saved, so a clone's host finds it open.
func pingPark(ctx context.Context, ch *hypervisor.Channels, p hypervisor.Park) error {
	timeout := 60 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	// The first ping waits for the guest's boot, the second is the warm-up: its
	// translations are what clones restore.
	for _, ping := range []string{"ping boot", "ping park"} {
		answer, err := roundTrip(ch.Control, ping, timeout)
		if err != nil {
			return err
		}
		if answer != "pong "+ping {
			return fmt.Errorf("park: unexpected answer %q", answer)
		}
		if ping == "ping boot" {
			if err := p.BeginWarmup(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// A template is made once; two clones run at the same time, each with its own sockets and
// share; removing the template's files under a running clone does not disturb it.
func TestTemplateClones(t *testing.T) {
	onEachMachine(t, func(t *testing.T, cfg hypervisor.Config) {
		dir := shmDir(t)
		l := &Launcher{}
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()

		saves, err := savesTranslations(ctx, withDefaults(cfg).QEMU)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		snap, err := l.CreateTemplate(ctx, cfg, hypervisor.Snapshot{
			Memory: filepath.Join(dir, "memory"), State: filepath.Join(dir, "state"),
			Translations: filepath.Join(dir, "translations"),
		}, pingPark)
		if err != nil {
			t.Fatalf("create template: %v (console: %s)", err, tail(pathsIn(cfg.Dir).Console, 5))
		}
		translations := checkTranslationsSaved(t, snap, saves, filepath.Join(dir, "translations"))
		t.Logf("%s: template made in %v: %+v", cfg.Machine, time.Since(start), snap)
		if snap.Accel != hypervisor.AccelTCG {
			t.Errorf("accel %q", snap.Accel)
		}
		if cfg.Machine == hypervisor.MachineQ35 && !strings.HasPrefix(snap.MachineType, "pc-q35-") {
			t.Errorf("q35 template with unversioned machine type %q", snap.MachineType)
		}
		assertGoneDir(t, cfg.Dir)
		st, err := os.Stat(snap.State)
		if err != nil {
			t.Fatal(err)
		}
		mem, err := os.Stat(snap.Memory)
		if err != nil || mem.Size() != 128<<20 {
			t.Fatalf("memory file: %v, %v", mem, err)
		}
		// The RAM stayed out of the state: it is in the memory file.
		if st.Size() > 4<<20 {
			t.Errorf("state file is %d bytes: RAM was migrated (x-ignore-shared not in effect?)", st.Size())
		}
		t.Logf("%s: state %d bytes", cfg.Machine, st.Size())

		clones := make([]hypervisor.VM, 2)
		conns := make([]net.Conn, 2)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range clones {
			c := vmConfig(t)
			c.Machine = cfg.Machine
			c.ID = fmt.Sprintf("%s-clone%d", cfg.ID, i)
			if err := os.WriteFile(filepath.Join(c.ShareDir, fmt.Sprintf("clone%d.txt", i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				begin := time.Now()
				v, err := l.Clone(ctx, c, snap)
				if err != nil {
					errs[i] = err
					return
				}
				clones[i] = v
				t.Cleanup(func() { v.Kill() })
				cont := time.Since(begin)
				ch, err := v.Channels(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				t.Cleanup(func() { ch.Close() })
				conns[i] = ch.Control
				answer, err := roundTrip(ch.Control, fmt.Sprintf("ping %d", i), 30*time.Second)
				if err != nil || answer != fmt.Sprintf("pong ping %d", i) {
					errs[i] = fmt.Errorf("clone %d answered %q, %v (console %s)", i, answer, err, tail(v.ConsoleLog(), 5))
					return
				}
				t.Logf("%s: clone %d: qemu start -> cont %v, -> guest answered %v", cfg.Machine, i, cont, time.Since(begin))
				if translations > 0 {
					errs[i] = checkTranslationsRestored(ctx, v, translations)
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		for i, v := range clones {
			if !v.Restored() {
				t.Errorf("clone %d does not report Restored", i)
			}
			// Each clone's 9p device is backed by its own share directory.
			answer, err := roundTrip(conns[i], "share", 30*time.Second)
			if want := fmt.Sprintf("share clone%d.txt", i); err != nil || answer != want {
				t.Errorf("clone %d share: %q, %v; want %q", i, answer, err, want)
			}
		}

		if translations > 0 {
			checkBadTranslationsRefused(t, ctx, l, cfg, snap)
		}

		// Deleting the template under running clones: they map the RAM privately.
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		for i := range clones {
			answer, err := roundTrip(conns[i], "ping after removal", 30*time.Second)
			if err != nil || answer != "pong ping after removal" {
				t.Errorf("clone %d after the template was removed: %q, %v", i, answer, err)
			}
		}
		for _, v := range clones {
			if err := v.Kill(); err != nil {
				t.Fatal(err)
			}
			assertGone(t, v, filepath.Dir(v.ConsoleLog()))
		}
	})
}

// A template saved with its 9p share mounted (runv's QEMU: x-migrate-fids): every clone
// finds the share mounted, its own directory behind it, and writes into it.
func TestTemplateKeepsShareMount(t *testing.T) {
	onEachMachine(t, func(t *testing.T, cfg hypervisor.Config) {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		qemu := withDefaults(cfg).QEMU
		if kept, err := keepsShareFids(ctx, qemu, cfg.Machine); err != nil {
			t.Fatal(err)
		} else if !kept {
			t.Skipf("%s has no %s property: not runv's QEMU build (make qemu; RUNV_QEMU names it)", qemu, shareFidsProp)
		}
		dir := shmDir(t)
		l := &Launcher{}
		snap, err := l.CreateTemplate(ctx, cfg, hypervisor.Snapshot{
			Memory: filepath.Join(dir, "memory"), State: filepath.Join(dir, "state"),
		}, func(ctx context.Context, ch *hypervisor.Channels, p hypervisor.Park) error {
			if !p.ShareKept {
				return errors.New("park was not told that the share is kept")
			}
			if answer, err := roundTrip(ch.Control, "share", 30*time.Second); err != nil || answer != "share" {
				return fmt.Errorf("the template's mount of its (empty) share: %q, %v", answer, err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("create template: %v (console: %s)", err, tail(pathsIn(cfg.Dir).Console, 5))
		}
		if !snap.ShareKept {
			t.Fatalf("snapshot %+v: ShareKept false with %s", snap, qemu)
		}
		for i := range 2 {
			c := vmConfig(t)
			c.Machine = cfg.Machine
			c.ID = fmt.Sprintf("%s-clone%d", cfg.ID, i)
			mine := fmt.Sprintf("clone%d.txt", i)
			if err := os.WriteFile(filepath.Join(c.ShareDir, mine), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			v, err := l.Clone(ctx, c, snap)
			if err != nil {
				t.Fatalf("clone %d: %v", i, err)
			}
			ch := mustChannels(t, v)
			// No mount in the clone: the template's lists this clone's directory.
			if answer, err := roundTrip(ch.Control, "mounted", 30*time.Second); err != nil || answer != "mounted "+mine {
				t.Errorf("clone %d: %q, %v; want %q (console %s)", i, answer, err, "mounted "+mine, tail(v.ConsoleLog(), 5))
			}
			if answer, err := roundTrip(ch.Control, "write from-guest", 30*time.Second); err != nil || answer != "wrote from-guest" {
				t.Errorf("clone %d: write: %q, %v", i, answer, err)
			} else if b, err := os.ReadFile(filepath.Join(c.ShareDir, "from-guest")); err != nil || string(b) != "guest\n" {
				t.Errorf("clone %d: the guest's file in its share: %q, %v", i, b, err)
			}
			if err := v.Kill(); err != nil {
				t.Fatal(err)
			}
			assertGone(t, v, filepath.Dir(v.ConsoleLog()))
		}
	})
}

// assertGoneDir checks that no QEMU runs for dir and its sockets are removed.
func assertGoneDir(t *testing.T, dir string) {
	t.Helper()
	if pids := qemutest.QEMUsFor(dir); len(pids) > 0 {
		t.Errorf("qemu still running for %s: %v", dir, pids)
	}
	for _, f := range pathsIn(dir).transient() {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

// A clone whose device state does not load fails with QEMU's reason, and leaves nothing.
func TestCloneBadState(t *testing.T) {
	cfg := vmConfig(t)
	dir := shmDir(t)
	snap := hypervisor.Snapshot{Memory: filepath.Join(dir, "memory"), State: filepath.Join(dir, "state"),
		MachineType: hypervisor.MachineMicroVM, Accel: hypervisor.AccelTCG}
	if err := os.WriteFile(snap.State, []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(snap.Memory)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(128 << 20)
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := (&Launcher{}).Clone(ctx, cfg, snap)
	if err == nil {
		v.Kill()
		t.Fatal("clone of garbage state succeeded")
	}
	if !errors.Is(err, hypervisor.ErrVMExited) || !strings.Contains(err.Error(), "wait-incoming") {
		t.Errorf("error %v: want the wait-incoming step and ErrVMExited", err)
	}
	t.Logf("error: %v", err)
	assertGoneDir(t, cfg.Dir)
}

// checkTranslationsSaved checks that a template has translations exactly when its QEMU can
// save them (runv's build; one vCPU), and returns their file's size.
func checkTranslationsSaved(t *testing.T, snap hypervisor.Snapshot, saves bool, asked string) int64 {
	t.Helper()
	if !saves {
		if snap.Translations != "" {
			t.Errorf("translations %s from a QEMU without %s", snap.Translations, translationsSaveProp)
		}
		if _, err := os.Stat(asked); err == nil {
			t.Errorf("translations file %s left behind", asked)
		}
		return 0
	}
	st, err := os.Stat(snap.Translations)
	if err != nil || st.Size() == 0 {
		t.Fatalf("runv's QEMU saved no translations: %v, %v", st, err)
	}
	t.Logf("translations: %d bytes", st.Size())
	return st.Size()
}

// jitCodeBytes is how much translated code v's QEMU holds (x-query-jit's "gen code size").
func jitCodeBytes(ctx context.Context, v hypervisor.VM) (int64, error) {
	var jit struct {
		Text string `json:"human-readable-text"`
	}
	if err := v.(*vm).qmp(ctx, "x-query-jit", nil, &jit); err != nil {
		return 0, err
	}
	for _, line := range strings.Split(jit.Text, "\n") {
		if rest, ok := strings.CutPrefix(line, "gen code size"); ok {
			used, _, _ := strings.Cut(strings.TrimSpace(rest), "/")
			return strconv.ParseInt(used, 10, 64)
		}
	}
	return 0, fmt.Errorf("x-query-jit says no code size: %q", jit.Text)
}

// checkTranslationsRestored checks that a clone's QEMU holds its template's translations:
// at least the code the file holds, which a clone that only translated a ping would not.
func checkTranslationsRestored(ctx context.Context, v hypervisor.VM, fileBytes int64) error {
	code, err := jitCodeBytes(ctx, v)
	if err != nil {
		return err
	}
	// The file is the code, its blocks' offsets (8 bytes per ~700 of code) and a header.
	if code < fileBytes*9/10 {
		return fmt.Errorf("clone holds %d bytes of translated code, its template saved %d (qemu.log: %s)", code, fileBytes, qemuStderr(v))
	}
	return nil
}

// checkBadTranslationsRefused starts a clone whose translations file is not one: QEMU says
// so in its log and the clone runs, translating as usual.
func checkBadTranslationsRefused(t *testing.T, ctx context.Context, l *Launcher, cfg hypervisor.Config, snap hypervisor.Snapshot) {
	t.Helper()
	bad := filepath.Join(t.TempDir(), "translations")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("not translations "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	snap.Translations = bad
	c := vmConfig(t)
	c.Machine = cfg.Machine
	c.ID = cfg.ID + "-badtb"
	v, err := l.Clone(ctx, c, snap)
	if err != nil {
		t.Fatalf("clone with a bad translations file: %v", err)
	}
	defer func() {
		if err := v.Kill(); err != nil {
			t.Error(err)
		}
		assertGone(t, v, filepath.Dir(v.ConsoleLog()))
	}()
	ch, err := v.Channels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if answer, err := roundTrip(ch.Control, "ping", 30*time.Second); err != nil || answer != "pong ping" {
		t.Fatalf("clone with a bad translations file answered %q, %v", answer, err)
	}
	if log := qemuStderr(v); !strings.Contains(log, "translation snapshot not loaded: not a translation snapshot") {
		t.Errorf("qemu.log of a clone with a bad translations file: %q", log)
	}
}

// The translations probe tells runv's QEMU from Debian's, each asked for real.
func TestTranslationsProbe(t *testing.T) {
	qemutest.RequireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ours := withDefaults(vmConfig(t)).QEMU
	if kept, err := keepsShareFids(ctx, ours, hypervisor.MachineMicroVM); err != nil || !kept {
		t.Skipf("%s is not runv's QEMU build (make qemu; RUNV_QEMU names it): %v", ours, err)
	}
	if ok, err := savesTranslations(ctx, ours); err != nil || !ok {
		t.Errorf("runv's QEMU %s: savesTranslations = %v, %v", ours, ok, err)
	}
	const debian = "/usr/bin/qemu-system-x86_64" // make deps installs it: qemu-build builds from its source
	if ok, err := savesTranslations(ctx, debian); err != nil || ok {
		t.Errorf("Debian's QEMU %s: savesTranslations = %v, %v; want false, nil", debian, ok, err)
	}
}
