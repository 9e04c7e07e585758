package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// shareDirMode is the mode of a VM's share directory (see startProcess).
const shareDirMode = 0o711

// step is one named stage of a launch.
type step struct {
	name string
	fn   func(context.Context) error
}

// runSteps runs steps in order, logs each one's duration at debug level, and stops at the
// first failure, naming the step.
func runSteps(ctx context.Context, log *slog.Logger, steps []step) error {
	begin := time.Now()
	for _, s := range steps {
		// Do not start what would be torn down at once.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		start := time.Now()
		if err := s.fn(ctx); err != nil {
			log.Debug("launch step failed", "step", s.name, "duration", time.Since(start), "error", err)
			return fmt.Errorf("%s: %w", s.name, err)
		}
		log.Debug("launch step", "step", s.name, "duration", time.Since(start))
	}
	log.Debug("launched", "duration", time.Since(begin))
	return nil
}

// launch is the state the steps build up.
type launch struct {
	l     *Launcher
	cfg   hypervisor.Config
	log   *slog.Logger
	accel string
	args  []string
	vm    *vm

	// Set by template creation and clones (template.go); zero for a cold boot.
	machineType string // versioned machine type
	memFile     string // guest RAM file
	memShared   bool   // template: RAM written into memFile
	incoming    bool   // clone: no kernel, waits for migrate-incoming
	keepShare   bool   // template: the 9p device carries the guest's mount over (sharefids.go)
	// translations: a template or a direct boot saves its translated code, a clone or a
	// direct boot restores it (translations.go, boottranslations.go).
	translations translationsUse
	// bootSave is the file a direct boot saves its translations in (boottranslations.go).
	bootSave *pendingBootSave
	// extraFiles are inherited by QEMU as descriptors stateFD, ... (a clone's device state
	// and translations, a template's translations), after the console pipe and the sockets
	// (vmsockets.go).
	extraFiles []*os.File
	// jail is QEMU's mount namespace (jail.go); nil when not confining.
	jail *jail
}

func (ln *launch) validate(context.Context) error { return validateFor(&ln.cfg, !ln.incoming) }

// closeExtraFiles closes runv's descriptors of extraFiles once the launch's steps ran:
// QEMU has its own, or never started.
func (ln *launch) closeExtraFiles() {
	for _, f := range ln.extraFiles {
		f.Close()
	}
}

func (ln *launch) resolveAccel(ctx context.Context) error {
	accel, err := ln.l.resolveAccel(ctx, ln.cfg)
	ln.accel = accel
	return err
}

func (ln *launch) buildArgs(context.Context) error {
	s := spec{cfg: ln.cfg, accel: ln.accel, nics: NICSlots, inheritSockets: true,
		machineType: ln.machineType, memFile: ln.memFile, memShared: ln.memShared, incoming: ln.incoming,
		keepShare: ln.keepShare, translations: ln.translations}
	// A clone boots no kernel: the template's command line (with its tsc_early_khz) is
	// already in effect in the restored guest.
	if ln.cfg.Machine == hypervisor.MachineMicroVM && ln.accel == hypervisor.AccelTCG && !ln.incoming {
		khz, err := ln.l.tscKHz()
		if err != nil {
			return err
		}
		s.tscKHz = khz
	}
	if confining() {
		sys, err := qemuHostFiles(ln.cfg.QEMU, ln.l.hostFilesCachePath())
		if err != nil {
			return err
		}
		if ln.jail, err = vmJail(ln.cfg, ln.accel, ln.memFile, ln.memShared, ln.incoming, sys); err != nil {
			return err
		}
	}
	ln.args = buildArgs(s)
	ln.log.Debug("qemu command line", "qemu", ln.cfg.QEMU, "args", ln.args)
	return nil
}

func (ln *launch) startProcess(context.Context) error {
	// The share's root is exported to the guest as the root of its 9p share. A container in
	// a user namespace prepares its root as its own (mapped) root user, who must be able to
	// reach <share>/<id>/rootfs: anyone may traverse the share's root, not list it (the
	// directory above it stays private). Done here rather than by the guest over 9p, which
	// cost every pod's start a 9p round trip, in a clone a path run for the first time.
	if err := os.Chmod(ln.cfg.ShareDir, shareDirMode); err != nil {
		return fmt.Errorf("share directory: %w", err)
	}
	v := &vm{cfg: ln.cfg, accel: ln.accel, paths: pathsIn(ln.cfg.Dir), log: ln.log, restored: ln.incoming, bootSave: ln.bootSave}
	// Sockets left by a QEMU that was killed before it could clean up would make us talk
	// to nobody (or wait for a dead socket) until the new QEMU replaced them.
	v.paths.removeTransient()
	logf, err := os.OpenFile(v.paths.QEMULog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create qemu log: %w", err)
	}
	defer logf.Close() // QEMU has its own descriptor once started
	// Made while the forking thread prepares QEMU's network namespace, taps and jail
	// (startProcess): each socket is a file created in the VM's directory.
	pending := listenVMAsync(v.paths)
	defer pending.close() // QEMU has its own descriptors once started
	console, err := newConsole(v.paths.Console)
	if err != nil {
		pending.close()
		v.paths.removeTransient()
		return err
	}
	p, err := startProcess(startOpts{path: ln.cfg.QEMU, args: ln.args, stderr: logf, onExit: v.exited,
		extraFiles: []*os.File{console.w},
		awaitFiles: func() ([]*os.File, error) {
			ls, err := pending.wait()
			if err != nil {
				return nil, err
			}
			return slices.Concat(ls.files, ln.extraFiles), nil
		},
		confine: true, name: ln.cfg.ID,
		newNetNS: true, taps: nicTaps{n: NICSlots, queues: nicQueues(ln.cfg.CPUs)},
		jail: ln.jail, jailRoot: ln.cfg.Dir})
	console.started() // QEMU holds the write end now (or never will)
	if err != nil {
		pending.close()
		v.paths.removeTransient()
		return fmt.Errorf("start %s: %w", ln.cfg.QEMU, err)
	}
	v.proc = p
	ln.vm = v
	ln.log.Debug("qemu started", "pid", p.pid)
	return nil
}

// connectQMP completes the QMP handshake.
func (ln *launch) connectQMP(ctx context.Context) error {
	mon, err := ln.dialMonitor()
	if err != nil {
		return err
	}
	return ln.handshake(ctx, mon)
}

// dialMonitor connects to QEMU's QMP socket and makes the VM's monitor on it. The socket
// listens from before QEMU started (vmsockets.go): the connection is queued until QEMU's
// main loop accepts it, with no poll for the socket to appear.
func (ln *launch) dialMonitor() (*monitor, error) {
	conn, err := dialQueued(ln.vm.paths.QMP)
	if err != nil {
		return nil, ln.exitedOr(err)
	}
	mon := newMonitor(conn, ln.vm.proc.done)
	ln.vm.setMonitor(mon) // closed with QEMU (vm.exited)
	return mon, nil
}

// handshake completes mon's QMP handshake, with calls written at once after it
// (monitor.batch). It waits for QEMU's main loop: the greeting comes once QEMU is
// initialised.
func (ln *launch) handshake(ctx context.Context, mon *monitor, calls ...qmpCall) error {
	ctx, cancel := context.WithTimeout(ctx, ln.l.startTimeout())
	defer cancel()
	if err := mon.handshake(ctx, calls...); err != nil {
		mon.close()
		return ln.exitedOr(err)
	}
	return nil
}

func (ln *launch) queryStatus(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ln.l.startTimeout())
	defer cancel()
	st, err := ln.vm.monitor().status(ctx)
	if err != nil {
		return ln.exitedOr(err)
	}
	return ln.checkStatus(st, "running")
}

// checkStatus fails unless QEMU's run state st is want, which it is at every launch's
// start: "running" for a boot, "inmigrate" for a clone waiting for its state.
func (ln *launch) checkStatus(st status, want string) error {
	if st.Status != want {
		return fmt.Errorf("vm is %q, not %s (console: %s)", st.Status, want, ln.vm.paths.Console)
	}
	return nil
}

// exitedOr turns err into "QEMU exited during start" with QEMU's last words when QEMU is
// gone (or going) on its own: that message, not a socket error, is what the user needs.
func (ln *launch) exitedOr(err error) error {
	p := ln.vm.proc
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err != errExitedEarly {
		// A QMP connection that broke usually means QEMU is on its way out: give it a
		// moment to be reaped, so we can say why.
		select {
		case <-p.done:
		case <-time.After(exitGrace):
			return err
		}
	}
	<-p.done
	msg := tail(ln.vm.paths.QEMULog, 8)
	if free, ok := nearlyFull(ln.cfg.Dir); ok {
		// QEMU could not write its pid file, console or log (nor we its stderr): that, not
		// an empty log, is what the user must fix.
		return classify(fmt.Errorf("qemu exited during start (%v; %s): the filesystem of %s is full (%d KiB free): %w",
			p.waitErr, msg, ln.cfg.Dir, free>>10, unix.ENOSPC), hypervisor.ErrVMExited, errdefs.ErrFailedPrecondition)
	}
	if msg == "" {
		msg = "no output on stderr; see " + ln.vm.paths.Console
	}
	return classify(fmt.Errorf("qemu exited during start (%v): %s", p.waitErr, msg),
		hypervisor.ErrVMExited, errdefs.ErrUnavailable)
}

// teardown undoes a failed launch: QEMU killed and reaped, sockets removed (by vm.exited).
func (ln *launch) teardown() {
	if ln.vm == nil {
		return
	}
	ln.vm.proc.killAndWait()
}

// nearlyFull reports whether the filesystem holding dir has less room than a VM's files
// need at start (pid file, console and logs: a few pages each), and how much it has.
func nearlyFull(dir string) (free int64, full bool) {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0, false
	}
	free = int64(st.Bavail) * st.Bsize
	return free, free < 1<<20
}
