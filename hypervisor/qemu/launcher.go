package qemu

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/runv-project/runv/hypervisor"
	"github.com/runv-project/runv/logging"
)

// Default limits of a launch.
const (
	DefaultStartTimeout = 10 * time.Second
	// DefaultProbeTimeout bounds the KVM probe when neither it nor the TCG guest racing it
	// answers (raceProbes): the race ends as soon as one does, 0.7-3.5 s under TCG here
	// depending on the load, so the bound only matters for guests that boot nowhere. It
	// was 3 s before the race: on a loaded host the TCG guest then lost to the deadline and
	// the verdict could not say that KVM was the slower one (hostVerdict).
	DefaultProbeTimeout = 10 * time.Second

	// exitGrace is how long a failed launch waits for a QEMU that is apparently exiting,
	// to report its own error message rather than a broken socket.
	exitGrace = 500 * time.Millisecond
)

// Launcher boots VMs with QEMU. The zero value is ready to use.
type Launcher struct {
	// AccelCache is the file the KVM probe's verdict is kept in across processes. Empty:
	// $RUNV_ACCEL_CACHE, else /run/runv-accel.json.
	AccelCache string
	// ProbeTimeout bounds the probe race's boots. Zero: DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// StartTimeout bounds QEMU's start until QMP answers, within the launch's context.
	// Zero: DefaultStartTimeout.
	StartTimeout time.Duration
	// TSCkHz overrides the host TSC frequency passed to microvm guests under TCG. Zero:
	// "cpu MHz" of /proc/cpuinfo.
	TSCkHz int

	prepared preparedBoot
}

var _ hypervisor.Launcher = (*Launcher)(nil)

// preparedBoot is the thread PrepareBoot started for the next Launch, and the taps it made.
type preparedBoot struct {
	mu     sync.Mutex
	thread *forkingThread
	taps   nicTaps
}

// PrepareBoot starts the thread the QEMU of the next Launch, a VM with cpus vCPUs, is to be
// forked from (forkingThread): it makes QEMU's network namespace and taps at once, on the
// other core while the caller goes on (a pod daemon that will boot its pod's VM directly
// calls it first thing). A Launch of another size makes its own; DropPrepared ends one no
// Launch took.
func (l *Launcher) PrepareBoot(cpus int) {
	taps := nicTaps{n: NICSlots, queues: nicQueues(cpus)}
	t := startForkingThread(true, taps)
	l.prepared.mu.Lock()
	old := l.prepared.thread
	l.prepared.thread, l.prepared.taps = t, taps
	l.prepared.mu.Unlock()
	if old != nil {
		old.abandon()
	}
}

// DropPrepared ends the thread PrepareBoot started if no Launch took it, with its network
// namespace and taps.
func (l *Launcher) DropPrepared() {
	if t, _ := l.takePrepared(); t != nil {
		t.abandon()
	}
}

// takePrepared takes the thread PrepareBoot started (nil if none) and the taps it made.
func (l *Launcher) takePrepared() (*forkingThread, nicTaps) {
	l.prepared.mu.Lock()
	defer l.prepared.mu.Unlock()
	t := l.prepared.thread
	l.prepared.thread = nil
	return t, l.prepared.taps
}

// Launch boots a VM and returns once QEMU runs it and answers on QMP; the guest is then
// still booting. On error nothing it started is left: no process, no socket.
func (l *Launcher) Launch(ctx context.Context, cfg hypervisor.Config) (hypervisor.VM, error) {
	ln := &launch{l: l, cfg: withDefaults(cfg), log: logging.G(ctx).With("vm", cfg.ID)}
	if t, made := l.takePrepared(); t != nil && made != ln.taps() {
		t.abandon() // made for another size: startProcess makes the VM's own
	} else {
		ln.thread = t
	}
	err := runSteps(ctx, ln.log, []step{
		{"validate", ln.validate},
		{"resolve-accel", ln.resolveAccel},
		{"build-args", ln.buildArgs},
		{"start-process", ln.startProcess},
		{"connect-qmp", ln.connectQMP},
		{"query-status", ln.queryStatus},
	})
	if err != nil {
		ln.teardown()
		return nil, fmt.Errorf("launch vm %s: %w", cfg.ID, err)
	}
	return ln.result(), nil
}

// result is the launched VM, as a Hotplugger when it has room to grow.
func (ln *launch) result() hypervisor.VM {
	if hotplugCapable(ln.cfg) {
		return &hotplugVM{vm: ln.vm}
	}
	return ln.vm
}

func (l *Launcher) startTimeout() time.Duration {
	if l.StartTimeout > 0 {
		return l.StartTimeout
	}
	return DefaultStartTimeout
}

func (l *Launcher) probeTimeout() time.Duration {
	if l.ProbeTimeout > 0 {
		return l.ProbeTimeout
	}
	return DefaultProbeTimeout
}

func (l *Launcher) tscKHz() (int, error) {
	if l.TSCkHz > 0 {
		return l.TSCkHz, nil
	}
	khz, err := hostTSCkHz()
	if err != nil {
		// Without tsc_early_khz a microvm guest under TCG hangs in TSC calibration.
		return 0, invalidf("cannot tell the host TSC frequency, which a microvm guest needs under TCG (%v): use machine %s", err, hypervisor.MachineQ35)
	}
	return khz, nil
}
