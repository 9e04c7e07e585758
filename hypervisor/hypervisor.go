// Package hypervisor defines what the runtime needs from a virtual machine monitor, split by
// concern: booting and stopping a VM (Launcher, VM), and hot-plugging devices (Hotplugger).
// Host networking lives elsewhere. Implementations: hypervisor/qemu.
package hypervisor

import (
	"context"
	"errors"
	"net"
)

// Machine types.
const (
	MachineMicroVM = "microvm" // fastest boot and clone; no hot-plug
	MachineQ35     = "q35"     // PCI, CPU and memory hot-plug
)

// Accelerators.
const (
	AccelAuto = "auto" // KVM when a guest really runs under it (probed with a deadline), else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

var (
	// ErrVMExited is returned by operations on a VM whose monitor process is gone, and by a
	// launch whose monitor process exited before the VM was up.
	ErrVMExited = errors.New("vm exited")
	// ErrAccelUnavailable is returned by a launch that asked for an accelerator (kvm) that
	// cannot run a guest on this host.
	ErrAccelUnavailable = errors.New("accelerator unavailable")
)

// Config describes one VM to boot.
type Config struct {
	// ID names the VM in logs and errors (the pod id).
	ID string
	// Dir is the VM's private runtime directory: QMP and channel sockets, console log, pid
	// file. It must exist; the VM removes nothing outside it.
	Dir string

	Kernel string // uncompressed PVH vmlinux
	Initrd string
	// KernelParams are appended to the runtime's own command line.
	KernelParams []string

	Machine   string // MachineMicroVM (default) or MachineQ35
	Accel     string // AccelAuto (default), AccelKVM or AccelTCG
	CPUs      int    // boot vCPUs (default 1)
	MemoryMiB int    // boot memory (default 128)
	// MaxCPUs and MaxMemoryMiB reserve room for hot-plug (q35 only); 0 means no hot-plug.
	MaxCPUs      int
	MaxMemoryMiB int

	// ShareDir is exported to the guest over virtio-9p with tag agentproto.ShareTag.
	ShareDir string

	// QEMU is the emulator binary (default: qemu-system-x86_64 on PATH).
	QEMU string
}

// Channels are the two virtio-serial ports the agent protocol runs on, connected.
type Channels struct {
	Control net.Conn
	Stream  net.Conn
}

// Close closes both channels.
func (c *Channels) Close() error {
	return errors.Join(c.Control.Close(), c.Stream.Close())
}

// Launcher boots VMs.
type Launcher interface {
	Launch(ctx context.Context, cfg Config) (VM, error)
}

// VM is one running virtual machine.
type VM interface {
	// ID is Config.ID.
	ID() string
	// Pid is the monitor process's host pid.
	Pid() int
	// Channels returns the connected control and stream channels. It may be called once.
	Channels(ctx context.Context) (*Channels, error)
	// Done is closed when the monitor process has exited.
	Done() <-chan struct{}
	// Shutdown asks the guest to power off (the agent does this on DESTROYPOD; this is the
	// fallback), waits until ctx expires, then kills the monitor. It returns once the
	// process is gone and the VM's sockets are removed.
	Shutdown(ctx context.Context) error
	// Kill stops the monitor at once.
	Kill() error
	// ConsoleLog is the path of the guest's serial console log.
	ConsoleLog() string
	// Accel is the accelerator actually in use (auto resolved).
	Accel() string
}

// Hotplugger adds CPUs and memory to a running VM (q35 only).
type Hotplugger interface {
	HotplugCPUs(ctx context.Context, total int) error
	HotplugMemory(ctx context.Context, totalMiB int) error
}
