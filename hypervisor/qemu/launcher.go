package qemu

import (
	"context"
	"fmt"
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
	// TranslationsDir keeps the code direct boots translated, for later boots
	// (boottranslations.go). Empty: $RUNV_TRANSLATIONS_DIR, else DefaultTranslationsDir.
	TranslationsDir string
}

var _ hypervisor.Launcher = (*Launcher)(nil)

// Launch boots a VM and returns once QEMU runs it and answers on QMP; the guest is then
// still booting. On error nothing it started is left: no process, no socket.
func (l *Launcher) Launch(ctx context.Context, cfg hypervisor.Config) (hypervisor.VM, error) {
	ln := &launch{l: l, cfg: withDefaults(cfg), log: logging.G(ctx).With("vm", cfg.ID)}
	err := runSteps(ctx, ln.log, []step{
		{"validate", ln.validate},
		{"resolve-accel", ln.resolveAccel},
		{"boot-translations", ln.bootTranslations},
		{"build-args", ln.buildArgs},
		{"start-process", ln.startProcess},
		{"connect-qmp", ln.connectQMP},
		{"query-status", ln.queryStatus},
	})
	ln.closeExtraFiles()
	if err != nil {
		ln.teardown()
		if ln.vm == nil && ln.bootSave != nil {
			ln.bootSave.file.Close() // no QEMU: its exit will not
		}
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
