package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

const (
	// dialTimeout caps Channels when the caller's context has no shorter deadline: QEMU
	// listens on the chardevs from its start, so a dial that takes longer will not succeed.
	dialTimeout = 5 * time.Second
	// quitTimeout bounds the QMP "quit" after a guest ignored the power button.
	quitTimeout = 2 * time.Second
)

// vm is a running QEMU.
type vm struct {
	cfg   hypervisor.Config
	accel string
	paths paths
	proc  *process
	log   *slog.Logger
	// restored: a clone of a template, not a cold boot (see Restored).
	restored bool
	// bootSave: this boot saves its translations (SaveBootTranslations); guarded by mu.
	bootSave *pendingBootSave

	mu            sync.Mutex
	mon           *monitor // set once QMP is connected; closed when QEMU exits
	gone          bool     // exited ran: a monitor set later is closed at once
	channelsTaken bool
	// early are channels a clone connected before its device state loaded (cloneLaunch.
	// connectChannels): Channels hands them out; closed when QEMU exits if nobody took them.
	early *hypervisor.Channels

	// nicMu serialises NIC hot-plug (nicplug.go); pluggedNICs maps the slot of each NIC
	// plugged after boot to its root port.
	nicMu       sync.Mutex
	pluggedNICs map[int]int
}

var _ hypervisor.VM = (*vm)(nil)

func (v *vm) ID() string            { return v.cfg.ID }
func (v *vm) Pid() int              { return v.proc.pid }
func (v *vm) Done() <-chan struct{} { return v.proc.done }
func (v *vm) ConsoleLog() string    { return v.paths.Console }
func (v *vm) Accel() string         { return v.accel }

// Restored reports whether the VM is a clone of a template: its agent was up before the VM
// started and will not announce itself with READY, and its clock and RNG are the
// template's (hypervisor.VM).
func (v *vm) Restored() bool { return v.restored }

// Grown is false: a VM of its own is booted at the size it was asked for (hot-plug after
// boot is the pool's, factory.CachedVM).
func (v *vm) Grown() bool { return false }

func (v *vm) setMonitor(m *monitor) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gone {
		m.close()
	}
	v.mon = m
}

func (v *vm) monitor() *monitor {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mon
}

// exited runs in the waiter goroutine once QEMU is reaped. It gets the process as an
// argument because QEMU may exit before startProcess has returned it to us.
func (v *vm) exited(p *process) {
	v.paths.removeTransient()
	v.dropBootSave()
	v.mu.Lock()
	m, early := v.mon, v.early
	v.gone, v.early = true, nil
	v.mu.Unlock()
	if m != nil {
		m.close()
	}
	if early != nil {
		early.Close()
	}
	v.log.Debug("qemu exited", "pid", p.pid, "status", p.waitErr, "cpu", p.cpu, "sys", p.sysCPU, "minflt", p.minorFaults)
}

// qmp runs a QMP command, failing with ErrVMExited once QEMU is gone.
func (v *vm) qmp(ctx context.Context, command string, args, out any) error {
	m := v.monitor()
	if m == nil || v.proc.hasExited() {
		return fmt.Errorf("qmp %s: %w", command, hypervisor.ErrVMExited)
	}
	err := m.run(ctx, command, args, out)
	if err != nil && errors.Is(err, errMonitorClosed) && v.proc.hasExited() {
		return fmt.Errorf("qmp %s: %w", command, hypervisor.ErrVMExited)
	}
	return err
}

// Channels connects to the control and stream ports' chardev sockets (a clone's were
// connected before it ran).
func (v *vm) Channels(ctx context.Context) (*hypervisor.Channels, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.channelsTaken {
		return nil, fmt.Errorf("vm %s: channels already taken: %w", v.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if v.proc.hasExited() {
		return nil, fmt.Errorf("vm %s: channels: %w", v.cfg.ID, hypervisor.ErrVMExited)
	}
	ch := v.early
	if ch == nil {
		var err error
		if ch, err = v.dialChannels(ctx); err != nil {
			return nil, err
		}
	}
	v.early, v.channelsTaken = nil, true
	return ch, nil
}

// dialChannels connects to the control and stream ports' chardev sockets.
func (v *vm) dialChannels(ctx context.Context) (*hypervisor.Channels, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	ctl, err := d.DialContext(ctx, "unix", v.paths.Control)
	if err != nil {
		return nil, fmt.Errorf("vm %s: control channel: %w", v.cfg.ID, err)
	}
	stream, err := d.DialContext(ctx, "unix", v.paths.Stream)
	if err != nil {
		ctl.Close()
		return nil, fmt.Errorf("vm %s: stream channel: %w", v.cfg.ID, err)
	}
	return &hypervisor.Channels{Control: v.nudgeOnPortOpen(ctl), Stream: stream}, nil
}

// setEarlyChannels keeps ch for Channels, or closes it when QEMU is already gone.
func (v *vm) setEarlyChannels(ch *hypervisor.Channels) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gone {
		ch.Close()
		return
	}
	v.early = ch
}

// Shutdown presses the power button, waits for the guest to power off until ctx ends,
// then asks QEMU to quit, then kills it. It returns once QEMU is reaped and its sockets
// are gone; a guest that had to be stopped by force is not an error.
func (v *vm) Shutdown(ctx context.Context) error {
	if v.proc.hasExited() {
		return nil
	}
	if err := v.qmp(ctx, "system_powerdown", nil, nil); err != nil {
		v.log.Debug("system_powerdown failed", "error", err)
	} else {
		select {
		case <-v.proc.done:
			return nil
		case <-ctx.Done():
		}
	}
	v.log.Warn("guest did not power off in time: quitting qemu", "pid", v.proc.pid)
	// ctx is over by now; quit gets a short deadline of its own.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quitTimeout)
	defer cancel()
	if err := v.qmp(qctx, "quit", nil, nil); err == nil {
		select {
		case <-v.proc.done:
			return nil
		case <-qctx.Done():
		}
	}
	v.log.Warn("qemu did not quit: killing it", "pid", v.proc.pid)
	return v.Kill()
}

// Kill kills QEMU (and its process group) and returns once it is reaped.
func (v *vm) Kill() error {
	v.proc.killAndWait()
	return nil
}

// RunState is QEMU's run state ("running", "paused", ...) from query-status. QEMU answers
// from its main loop: a VM that answers has a live main loop.
func (v *vm) RunState(ctx context.Context) (string, error) {
	var st status
	if err := v.qmp(ctx, "query-status", nil, &st); err != nil {
		return "", fmt.Errorf("vm %s: %w", v.cfg.ID, err)
	}
	return st.Status, nil
}
