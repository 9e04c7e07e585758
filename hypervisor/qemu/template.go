package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// Templates follow notes/guest-boot.md section 4, measured on our machines:
//
//   - the template boots with its RAM in a memory-backend-file on tmpfs, share=on, so the
//     RAM ends up in that file; once its agent is parked (idle between two commands, its
//     host still connected) QEMU migrates it with x-ignore-shared into the state file
//     (stopping it as the migration completes): the file then holds the device state only
//     (~100 KB), not the RAM;
//   - a clone runs the same command line with share=off (a private copy-on-write mapping of
//     the template's RAM file: clones never write into it), its own sockets and share
//     directory, no kernel, and "-incoming defer"; x-ignore-shared must be set on this side
//     too, which QEMU 7.2 only allows over QMP, then migrate-incoming and wait for
//     "running" (the template was saved running: QEMU starts the clone once loaded);
//   - the host stays connected to the template's channels until its QEMU is gone, and a
//     clone's host connects before the clone's state loads: virtio-serial migrates whether
//     the host was connected and tells the guest only of a difference (its post-load
//     check), so a clone's agent finds its host where the template's left it, blocked in a
//     read, and serves the first command at once. (A host that connects later is told as a
//     reconnect: the agent sees its host go and come back, and says READY again.)
//
// A template's save is polled over QMP and a clone's load awaited on QMP's events, both
// against a deadline, never slept on.

const (
	// DefaultParkTimeout bounds the template VM's boot until its guest is parked.
	DefaultParkTimeout = 60 * time.Second
	// pollTemplate is the QMP polling period while a template's migration runs: saving
	// takes 10-20 ms, and is on no pod's path. (A clone's load, on its pod's path, is
	// waited for on QEMU's events: waitIncoming.)
	pollTemplate = 5 * time.Millisecond
)

// forbiddenTemplateParams are kernel parameters with which a template cannot work.
var forbiddenTemplateParams = map[string]string{
	// Measured twice: a clone of a guest ticking on the PIT never wakes up. (On microvm a
	// cold boot with it gets no timer interrupt either once the kernel is up: a 50 ms sleep
	// in /init never returns; docs/performance.md, "Direct boot".)
	"nolapic_timer": "a clone of a guest with nolapic_timer never wakes up",
}

var _ hypervisor.Templater = (*Launcher)(nil)

// templateLaunch adds template creation's steps to a launch.
type templateLaunch struct {
	*launch
	snap hypervisor.Snapshot
	park hypervisor.ParkFunc
	// held are the template's channels, closed only once its QEMU is gone (see the top).
	held *hypervisor.Channels
}

// CreateTemplate implements hypervisor.Templater.
func (l *Launcher) CreateTemplate(ctx context.Context, cfg hypervisor.Config, snap hypervisor.Snapshot, park hypervisor.ParkFunc) (hypervisor.Snapshot, error) {
	ln := &launch{l: l, cfg: withDefaults(cfg), log: logging.G(ctx).With("vm", cfg.ID, "template", true),
		memFile: snap.Memory, memShared: true}
	t := &templateLaunch{launch: ln, snap: snap, park: park}
	created := false // the memory file is ours to remove on failure
	err := runSteps(ctx, ln.log, []step{
		{"validate", func(ctx context.Context) error {
			if err := t.validateTemplate(); err != nil {
				return err
			}
			return ln.validate(ctx)
		}},
		{"resolve-accel", ln.resolveAccel},
		{"resolve-machine", t.resolveMachine},
		{"probe-share", t.probeShare},
		{"create-translations", func(ctx context.Context) error {
			if err := t.createTranslations(ctx); err != nil {
				return err
			}
			created = true
			return nil
		}},
		{"build-args", ln.buildArgs},
		{"start-process", func(ctx context.Context) error {
			created = true
			return ln.startProcess(ctx)
		}},
		{"connect-qmp", ln.connectQMP},
		{"query-status", ln.queryStatus},
		{"park-guest", t.parkGuest},
		{"save-state", t.saveState},
		{"quit", t.quit},
	})
	if err != nil {
		ln.teardown()
	}
	ln.closeExtraFiles()
	// Only now that QEMU is gone (parkGuest).
	if t.held != nil {
		t.held.Close()
	}
	if err != nil {
		if created {
			for _, f := range []string{snap.Memory, snap.State, snap.Translations} {
				if f != "" {
					os.Remove(f)
				}
			}
		}
		return hypervisor.Snapshot{}, fmt.Errorf("create template from vm %s: %w", cfg.ID, err)
	}
	t.snap.Accel, t.snap.MachineType, t.snap.ShareKept = ln.accel, ln.machineType, ln.keepShare
	t.keepTranslations()
	return t.snap, nil
}

func (t *templateLaunch) validateTemplate() error {
	if t.park == nil {
		return invalidf("template without a park function: nothing would tell when the guest is idle")
	}
	for _, p := range t.cfg.KernelParams {
		if why, bad := forbiddenTemplateParams[p]; bad {
			return invalidf("kernel parameter %s cannot be used for templates: %s", p, why)
		}
	}
	files := map[string]string{"memory": t.snap.Memory, "state": t.snap.State}
	if t.snap.Translations != "" { // optional
		files["translations"] = t.snap.Translations
	}
	for what, path := range files {
		if path == "" {
			return invalidf("template without a %s file", what)
		}
		// Never write into an existing file: clones may map it (MAP_PRIVATE shows later
		// writes in pages they have not copied yet). Templates are replaced by rename.
		if _, err := os.Lstat(path); err == nil {
			return classify(fmt.Errorf("template %s file %s already exists: templates are never overwritten in place", what, path), errdefs.ErrAlreadyExists)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("template %s file: %w", what, err)
		}
		if err := checkDir("template directory", filepath.Dir(path)); err != nil {
			return err
		}
	}
	if s := migrateSocketIn(t.cfg.Dir); len(s) > maxSunPath {
		return invalidf("vm directory %s is too long for the template's migration socket (%s is %d bytes, the limit is %d)", t.cfg.Dir, s, len(s), maxSunPath)
	}
	return nil
}

func (t *templateLaunch) resolveMachine(ctx context.Context) error {
	mt, err := resolveMachineType(ctx, t.cfg.QEMU, t.cfg.Machine)
	t.machineType = mt
	return err
}

// probeShare finds out whether this QEMU carries a mounted 9p share over into clones
// (runv's build does: qemu-build/patches), and then asks for it on the template's device.
func (t *templateLaunch) probeShare(ctx context.Context) error {
	kept, err := keepsShareFids(ctx, t.cfg.QEMU, t.cfg.Machine)
	t.keepShare = kept
	return err
}

// parkGuest connects to the template's channels and lets park bring the guest to rest. The
// connections stay open (park's closing them does nothing) until QEMU is gone: the saved
// guest has its host connected, as a clone's host will be (see the top).
func (t *templateLaunch) parkGuest(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultParkTimeout)
	defer cancel()
	ch, err := t.vm.Channels(ctx)
	if err != nil {
		return t.exitedOr(err)
	}
	t.held = ch
	err = t.park(ctx, &hypervisor.Channels{Control: heldConn{ch.Control}, Stream: heldConn{ch.Stream}},
		hypervisor.Park{ShareKept: t.keepShare, BeginWarmup: t.beginWarmup})
	if err != nil {
		if t.vm.proc.hasExited() {
			return t.exitedOr(err)
		}
		return fmt.Errorf("%w (console: %s)", err, t.vm.paths.Console)
	}
	return nil
}

// createTranslations creates the file the template's QEMU saves its translations into,
// when it can have them (translations.go); otherwise the snapshot goes without.
func (t *templateLaunch) createTranslations(ctx context.Context) error {
	if t.snap.Translations == "" {
		return nil
	}
	ok, why, err := canSaveTranslations(ctx, t.cfg, t.accel)
	if err != nil {
		t.log.Warn("template saved without translations", "reason", why, "error", err)
	}
	if !ok {
		t.log.Debug("template saved without translations", "reason", why)
		t.snap.Translations = ""
		return nil
	}
	f, err := os.OpenFile(t.snap.Translations, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create template translations file: %w", err)
	}
	t.extraFiles = append(t.extraFiles, f)
	t.translations = saveTranslations
	return nil
}

// beginWarmup marks where the translations the template saves start (hypervisor.Park):
// its QEMU drops what it translated so far at a stop, before the guest runs on.
func (t *templateLaunch) beginWarmup(ctx context.Context) error {
	if t.translations != saveTranslations {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.l.startTimeout())
	defer cancel()
	if err := t.vm.stopAndContinue(ctx); err != nil {
		return t.exitedOr(fmt.Errorf("mark the start of the translations to save: %w", err))
	}
	return nil
}

// keepTranslations drops the snapshot's translations file if QEMU left it empty: it could
// not save them (its reason is in qemu.log), and clones go without.
func (t *templateLaunch) keepTranslations() {
	if t.snap.Translations == "" {
		return
	}
	if st, err := os.Stat(t.snap.Translations); err != nil || st.Size() == 0 {
		t.log.Warn("template saved without translations: qemu wrote none", "qemu_log", t.vm.paths.QEMULog)
		os.Remove(t.snap.Translations)
		t.snap.Translations = ""
	}
}

func (t *templateLaunch) qmp(ctx context.Context, command string, args, out any) error {
	ctx, cancel := context.WithTimeout(ctx, t.l.startTimeout())
	defer cancel()
	if err := t.vm.qmp(ctx, command, args, out); err != nil {
		return t.exitedOr(err)
	}
	return nil
}

// heldConn is a template channel as park sees it: park's client closes its channels when
// done, but the connection must outlive the template VM (parkGuest).
type heldConn struct{ net.Conn }

func (heldConn) Close() error { return nil }

// ignoreShared is the capability that keeps share=on RAM out of the migration stream. It
// must be set on both ends.
var ignoreShared = map[string]any{
	"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
}

// migrationInfo is query-migrate's answer (the part we read).
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// saveState migrates the template's device state into the state file, through a socket
// runv listens on (migstate.go). The guest runs until the migration completes, when QEMU
// stops it for good and saves the devices (the RAM stays in the file, consistent at that
// stop): the state records the guest as running, so a clone starts by itself the moment its
// state is loaded, without a cont after it (waitIncoming).
func (t *templateLaunch) saveState(ctx context.Context) error {
	if err := t.qmp(ctx, "migrate-set-capabilities", ignoreShared, nil); err != nil {
		return err
	}
	sock := migrateSocketIn(t.cfg.Dir)
	recv, err := receiveState(sock, t.snap.State, maxDeviceState)
	if err != nil {
		return err
	}
	ok := false
	defer func() { recv.close(!ok) }()
	if err := t.qmp(ctx, "migrate", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		return err
	}
	var last migrationInfo
	err = t.vm.poll(ctx, t.l.startTimeout(), pollTemplate, func(ctx context.Context) (bool, error) {
		if err := t.vm.qmp(ctx, "query-migrate", nil, &last); err != nil {
			return false, err
		}
		switch last.Status {
		case "completed":
			return true, nil
		case "failed", "cancelled", "cancelling":
			return false, fmt.Errorf("migration to %s %s: %s", t.snap.State, last.Status, last.ErrorDesc)
		}
		return false, nil
	})
	if err != nil {
		return t.exitedOr(fmt.Errorf("save device state (last status %q): %w", last.Status, err))
	}
	// QEMU closes the stream once the migration completed: the file is whole at its end.
	wctx, cancel := context.WithTimeout(ctx, t.l.startTimeout())
	defer cancel()
	if err := recv.wait(wctx); err != nil {
		return err
	}
	st, err := os.Stat(t.snap.State)
	if err != nil || st.Size() == 0 {
		return fmt.Errorf("migration completed but state file %s is missing or empty (%v)", t.snap.State, err)
	}
	ok = true
	return nil
}

// quit ends the template VM. It must stay stopped for good: a guest running on would write
// into the RAM file that clones map.
func (t *templateLaunch) quit(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, quitTimeout)
	defer cancel()
	if err := t.vm.qmp(ctx, "quit", nil, nil); err != nil && !errors.Is(err, hypervisor.ErrVMExited) && !errors.Is(err, errMonitorClosed) {
		t.log.Debug("qmp quit", "error", err)
	}
	select {
	case <-t.vm.proc.done:
	case <-ctx.Done():
		t.log.Warn("template qemu did not quit: killing it", "pid", t.vm.proc.pid)
		t.vm.proc.killAndWait()
	}
	return nil
}

// Clone implements hypervisor.Templater.
func (l *Launcher) Clone(ctx context.Context, cfg hypervisor.Config, snap hypervisor.Snapshot) (hypervisor.VM, error) {
	ln := &launch{l: l, cfg: withDefaults(cfg), log: logging.G(ctx).With("vm", cfg.ID, "clone", true),
		machineType: snap.MachineType, memFile: snap.Memory, incoming: true}
	c := &cloneLaunch{launch: ln, snap: snap}
	err := runSteps(ctx, ln.log, []step{
		{"validate", func(ctx context.Context) error {
			if err := ln.validate(ctx); err != nil {
				return err
			}
			return c.validateSnapshot()
		}},
		{"resolve-accel", c.resolveAccel},
		{"build-args", ln.buildArgs},
		{"open-state", c.openState},
		{"start-process", ln.startProcess},
		{"connect-channels", c.connectChannels},
		{"connect-qmp", c.connectQMP},
		{"wait-incoming", c.waitIncoming},
		{"cont", c.cont},
	})
	if c.stopEvents != nil {
		c.stopEvents()
	}
	ln.closeExtraFiles()
	if err != nil {
		ln.teardown()
		return nil, fmt.Errorf("clone vm %s from %s: %w", cfg.ID, snap.State, err)
	}
	return ln.result(), nil
}

// cloneLaunch adds a clone's steps to a launch.
type cloneLaunch struct {
	*launch
	snap   hypervisor.Snapshot
	status string // the VM's run state while loading, as QEMU's answers and events tell it
	// events are QEMU's events from the handshake on, until stopEvents (waitIncoming).
	events     <-chan qmpEvent
	stopEvents func()
}

func (c *cloneLaunch) validateSnapshot() error {
	if c.snap.MachineType == "" || c.snap.Accel == "" {
		return invalidf("snapshot %s does not say which machine type and accelerator it was made with", c.snap.State)
	}
	st, err := os.Stat(c.snap.Memory)
	if err != nil {
		return classify(fmt.Errorf("template memory file: %w", err), errdefs.ErrFailedPrecondition)
	}
	// QEMU would say "backing store size ... does not match 'size' option": say it first.
	if want := int64(c.cfg.MemoryMiB) << 20; st.Size() != want {
		return invalidf("template memory file %s holds %d MiB, this VM has %d MiB", c.snap.Memory, st.Size()>>20, c.cfg.MemoryMiB)
	}
	if _, err := os.Stat(c.snap.State); err != nil {
		return classify(fmt.Errorf("template state file: %w", err), errdefs.ErrFailedPrecondition)
	}
	if c.snap.Translations != "" {
		c.translations = loadTranslations
	}
	return nil
}

// resolveAccel resolves the clone's accelerator, which must be the template's: the CPU
// state of one does not load into the other.
func (c *cloneLaunch) resolveAccel(ctx context.Context) error {
	if err := c.launch.resolveAccel(ctx); err != nil {
		return err
	}
	if c.accel != c.snap.Accel {
		return classify(fmt.Errorf("the template was made under %s, this VM would run under %s", c.snap.Accel, c.accel),
			errdefs.ErrFailedPrecondition)
	}
	return nil
}

// openState opens the template's device state for QEMU to inherit (migrate-incoming
// "fd:N", stateFD): QEMU itself may not spawn "cat" (-sandbox spawn=deny).
func (c *cloneLaunch) openState(context.Context) error {
	// In the order of their descriptors, stateFD and cloneTranslationsFD.
	files := [][2]string{{"state", c.snap.State}}
	if c.translations == loadTranslations {
		files = append(files, [2]string{"translations", c.snap.Translations})
	}
	for _, file := range files {
		what, path := file[0], file[1]
		f, err := os.Open(path)
		if err != nil {
			return classify(fmt.Errorf("template %s file: %w", what, err), errdefs.ErrFailedPrecondition)
		}
		c.extraFiles = append(c.extraFiles, f)
	}
	return nil
}

// connectChannels connects the host to the agent's channels before the device state loads,
// so that the loaded guest finds its host connected as the template's was (see the top).
// The sockets listen from before QEMU started (vmsockets.go): the connections are queued
// until QEMU's main loop accepts them, which it does before it reads QMP's commands.
func (c *cloneLaunch) connectChannels(ctx context.Context) error {
	ch, err := c.vm.dialChannels(ctx)
	if err != nil {
		return c.exitedOr(err)
	}
	c.vm.setEarlyChannels(ch)
	return nil
}

// cloneCapabilities are the migration capabilities of a clone: x-ignore-shared (see
// ignoreShared), and events, with which QEMU reports the load's end as a MIGRATION event
// (waitIncoming) instead of being asked until it says so.
var cloneCapabilities = map[string]any{
	"capabilities": []map[string]any{
		{"capability": "x-ignore-shared", "state": true},
		{"capability": "events", "state": true},
	},
}

// connectQMP writes the handshake and everything before the load at once: QMP runs them
// in order, so that QEMU starts loading the state the moment its main loop reads them,
// without a round trip each. query-status checks that QEMU waits for the state.
func (c *cloneLaunch) connectQMP(ctx context.Context) error {
	mon, err := c.dialMonitor()
	if err != nil {
		return err
	}
	// Before migrate-incoming is written: the load's events may follow it at once.
	c.events, c.stopEvents = mon.watch()
	var st status
	err = c.handshake(ctx, mon,
		qmpCall{command: "query-status", out: &st},
		qmpCall{command: "migrate-set-capabilities", args: cloneCapabilities},
		qmpCall{command: "migrate-incoming", args: map[string]any{"uri": "fd:" + strconv.Itoa(stateFD)}})
	if err != nil {
		return err
	}
	if err := c.checkStatus(st, "inmigrate"); err != nil {
		return err
	}
	c.status = st.Status
	return nil
}

// waitIncoming waits until the device state is loaded. A template is saved running (see
// saveState), so QEMU starts a clone by itself the moment its state is loaded: RESUME, then
// MIGRATION "completed" (QEMU reports the end only once the run state is set). One saved
// stopped (by older runv builds) completes without RESUME, loads "paused" and is continued
// by cont. A state that does not load makes QEMU exit; exitedOr then quotes its reason.
func (c *cloneLaunch) waitIncoming(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.l.startTimeout())
	defer cancel()
	if err := c.awaitLoad(ctx); err != nil {
		return c.exitedOr(fmt.Errorf("load device state (last status %q): %w", c.status, err))
	}
	return nil
}

func (c *cloneLaunch) awaitLoad(ctx context.Context) error {
	for {
		select {
		case ev := <-c.events:
			switch ev.Event {
			case "RESUME":
				c.status = "running"
			case "MIGRATION":
				var m migrationInfo
				if err := json.Unmarshal(ev.Data, &m); err != nil {
					return fmt.Errorf("migration event %.200s: %w", ev.Data, err)
				}
				switch m.Status {
				case "completed":
					if c.status == "running" {
						return nil
					}
					st, err := c.vm.monitor().status(ctx)
					if err != nil {
						return err
					}
					c.status = st.Status
					if st.Status != "paused" && st.Status != "running" {
						return fmt.Errorf("vm is %q once %s is loaded", st.Status, c.snap.State)
					}
					return nil
				case "failed", "cancelled":
					return fmt.Errorf("loading %s %s", c.snap.State, m.Status)
				}
			}
		case <-c.vm.proc.done:
			return fmt.Errorf("qemu exited: %w", hypervisor.ErrVMExited)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *cloneLaunch) cont(ctx context.Context) error {
	if c.status == "running" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.l.startTimeout())
	defer cancel()
	if err := c.vm.qmp(ctx, "cont", nil, nil); err != nil {
		return c.exitedOr(err)
	}
	return nil
}

// poll calls check every interval until it reports done or fails, QEMU exits, or timeout
// (within ctx) passes.
func (v *vm) poll(ctx context.Context, timeout, interval time.Duration, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if v.monitor() == nil {
			return fmt.Errorf("no qmp connection: %w", hypervisor.ErrVMExited)
		}
		done, err := check(ctx)
		if err != nil || done {
			return err
		}
		select {
		case <-tick.C:
		case <-v.proc.done:
			return fmt.Errorf("qemu exited: %w", hypervisor.ErrVMExited)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
