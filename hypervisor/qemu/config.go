package qemu

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// Defaults applied to a zero Config field.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 128

	// maxSunPath is the longest unix socket path the kernel accepts (sun_path is 108 bytes
	// including the terminating NUL).
	maxSunPath = 107
	// memorySlots is how many DIMMs a q35 VM with MaxMemoryMiB can receive: each
	// HotplugMemory call uses one.
	memorySlots = 8
	// dimmAlignMiB is the granularity of memory hot-plug: Linux onlines hot-plugged memory in
	// 128 MiB blocks on x86_64, so anything smaller would be wasted.
	dimmAlignMiB = 128
)

// Files in Config.Dir.
const (
	qmpSocket    = "qmp.sock"
	ctlSocket    = "ctl.sock"
	streamSocket = "stream.sock"
	pidFile      = "qemu.pid"
	consoleLog   = "console.log"
	qemuLog      = "qemu.log"
)

// paths are the files a VM keeps in its directory.
type paths struct {
	QMP, Control, Stream, PID, Console, QEMULog string
}

func pathsIn(dir string) paths {
	return paths{
		QMP:     filepath.Join(dir, qmpSocket),
		Control: filepath.Join(dir, ctlSocket),
		Stream:  filepath.Join(dir, streamSocket),
		PID:     filepath.Join(dir, pidFile),
		Console: filepath.Join(dir, consoleLog),
		QEMULog: filepath.Join(dir, qemuLog),
	}
}

// transient are the files that only make sense while QEMU runs.
func (p paths) transient() []string { return []string{p.QMP, p.Control, p.Stream, p.PID} }

// removeTransient removes the sockets and the pid file; missing files are fine.
func (p paths) removeTransient() {
	for _, f := range p.transient() {
		os.Remove(f)
	}
}

// withDefaults fills in zero fields.
func withDefaults(cfg hypervisor.Config) hypervisor.Config {
	if cfg.Machine == "" {
		cfg.Machine = hypervisor.MachineMicroVM
	}
	if cfg.Accel == "" {
		cfg.Accel = hypervisor.AccelAuto
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.QEMU == "" {
		cfg.QEMU = hypervisor.DefaultQEMU()
	}
	return cfg
}

// validate checks a defaulted Config against the host: every error says what is wrong with
// which path and what to do about it. It resolves cfg.QEMU to an absolute path.
func validate(cfg *hypervisor.Config) error { return validateFor(cfg, true) }

// validateFor is validate; boot is false for a clone, which needs no kernel or initrd: its
// RAM already holds the booted guest.
func validateFor(cfg *hypervisor.Config, boot bool) error {
	if cfg.ID == "" {
		return invalidf("vm has no id")
	}
	switch cfg.Machine {
	case hypervisor.MachineMicroVM, hypervisor.MachineQ35:
	default:
		return invalidf("unknown machine %q: use %s or %s", cfg.Machine, hypervisor.MachineMicroVM, hypervisor.MachineQ35)
	}
	switch cfg.Accel {
	case hypervisor.AccelAuto, hypervisor.AccelKVM, hypervisor.AccelTCG:
	default:
		return invalidf("unknown accelerator %q: use auto, kvm or tcg", cfg.Accel)
	}
	if err := validateSize(cfg); err != nil {
		return err
	}

	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return invalidf("qemu %s not found: run 'make qemu install' or install qemu-system-x86 ('make deps'), or pass --qemu: %w", cfg.QEMU, err)
	}
	cfg.QEMU = qemu
	if boot {
		if err := checkFile("kernel", cfg.Kernel, "run 'make kernel install' or pass --kernel"); err != nil {
			return err
		}
		if err := checkFile("initrd", cfg.Initrd, "run 'make initrd install' or pass --initrd"); err != nil {
			return err
		}
	}
	if err := checkDir("vm directory", cfg.Dir); err != nil {
		return err
	}
	if err := checkDir("share directory", cfg.ShareDir); err != nil {
		return err
	}
	// QEMU would fail with a bare "path too long" deep inside its output; say it up front.
	for _, p := range []string{qmpSocket, ctlSocket, streamSocket} {
		if s := filepath.Join(cfg.Dir, p); len(s) > maxSunPath {
			return invalidf("vm directory %s is too long for unix sockets (%s is %d bytes, the limit is %d): use a shorter --root", cfg.Dir, s, len(s), maxSunPath)
		}
	}
	return nil
}

func validateSize(cfg *hypervisor.Config) error {
	if cfg.CPUs < 1 || cfg.CPUs > 255 {
		return invalidf("%d vCPUs: must be between 1 and 255", cfg.CPUs)
	}
	if cfg.MemoryMiB < 32 {
		return invalidf("%d MiB of memory: the guest needs at least 32 MiB", cfg.MemoryMiB)
	}
	hotplug := false
	if cfg.MaxCPUs != 0 {
		if cfg.MaxCPUs < cfg.CPUs || cfg.MaxCPUs > 255 {
			return invalidf("max vCPUs %d: must be between the boot vCPUs (%d) and 255", cfg.MaxCPUs, cfg.CPUs)
		}
		hotplug = hotplug || cfg.MaxCPUs > cfg.CPUs
	}
	if cfg.MaxMemoryMiB != 0 {
		if cfg.MaxMemoryMiB < cfg.MemoryMiB {
			return invalidf("max memory %d MiB is below the boot memory (%d MiB)", cfg.MaxMemoryMiB, cfg.MemoryMiB)
		}
		hotplug = hotplug || cfg.MaxMemoryMiB > cfg.MemoryMiB
	}
	if hotplug && cfg.Machine != hypervisor.MachineQ35 {
		return invalidf("CPU and memory hot-plug need machine %s, not %s", hypervisor.MachineQ35, cfg.Machine)
	}
	return nil
}

func checkFile(what, path, fix string) error {
	if path == "" {
		return invalidf("no %s configured: %s", what, fix)
	}
	st, err := os.Stat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return classify(fmt.Errorf("%s %s not found: %s", what, path, fix), errdefs.ErrInvalidArgument, fs.ErrNotExist)
		}
		return invalidf("%s %s: %w", what, path, err)
	}
	if !st.Mode().IsRegular() {
		return invalidf("%s %s is not a regular file: %s", what, path, fix)
	}
	return nil
}

func checkDir(what, path string) error {
	if path == "" {
		return invalidf("no %s configured", what)
	}
	st, err := os.Stat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return classify(fmt.Errorf("%s %s not found: it must exist before the VM is launched", what, path), errdefs.ErrInvalidArgument, fs.ErrNotExist)
		}
		return invalidf("%s %s: %w", what, path, err)
	}
	if !st.IsDir() {
		return invalidf("%s %s is not a directory", what, path)
	}
	return nil
}

// hotplugCapable reports whether a VM booted from cfg can receive CPUs or memory.
func hotplugCapable(cfg hypervisor.Config) bool {
	return cfg.Machine == hypervisor.MachineQ35 &&
		(cfg.MaxCPUs > cfg.CPUs || cfg.MaxMemoryMiB > cfg.MemoryMiB)
}

func mib(n int) string { return fmt.Sprintf("%dM", n) }
