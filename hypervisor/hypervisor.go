// Package hypervisor defines what the runtime needs from a virtual machine monitor, split by
// concern: booting and stopping a VM (Launcher, VM), snapshotting a booted VM into a template
// and starting clones of it (Templater), and hot-plugging devices (Hotplugger). Host
// networking lives elsewhere. Implementations: hypervisor/qemu.
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

	// QEMU is the emulator binary (default: DefaultQEMU).
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
	// Restored reports whether the guest was not cold-booted: restored from a snapshot (a
	// template clone) or brought up and parked before it was handed out. Its agent is
	// already running and sends no READY, and the guest needs the time, fresh entropy and
	// its identity from the host.
	Restored() bool
	// Grown reports whether CPUs or memory were hot-plugged after boot to fit the request:
	// the guest has to online them (agentproto.MsgOnlineCPUMem) before they are of use.
	Grown() bool
}

// NIC is a network device a VM was booted with. VMs boot before their pod's network is
// known (factories boot them ahead), so every VM has a few; the host end of each is a tap
// that waits in a namespace of the VM's own (NetNS) until the network package moves it into
// the pod's network namespace and mirrors an interface onto it.
type NIC struct {
	// Slot is the device's index: the guest finds it by its permanent MAC,
	// agentproto.NICSlotMAC(Slot).
	Slot int
	// Tap is the name of the tap device backing it, in NetNS until moved.
	Tap string
	// NetNS is a path to the network namespace the tap was created in (QEMU's own).
	NetNS string
}

// NetworkDevices is implemented by VMs booted with NICs.
type NetworkDevices interface {
	NICs() []NIC
}

// Hotplugger adds CPUs and memory to a running VM (q35 only).
type Hotplugger interface {
	HotplugCPUs(ctx context.Context, total int) error
	HotplugMemory(ctx context.Context, totalMiB int) error
}

// Snapshot names a VM template's files and the facts of the template VM that its clones
// must reproduce exactly.
type Snapshot struct {
	// Memory is the guest RAM file, on tmpfs. The template VM maps it shared and leaves the
	// booted guest's RAM in it; clones map it privately (copy-on-write), so once a clone may
	// exist the file must never be written or truncated in place: replace it by rename.
	// Removing it is fine: running clones keep their mapping.
	Memory string
	// State is the device state (the migration stream without the RAM).
	State string
	// MachineType is the exact machine type the template ran, e.g. pc-q35-7.2: a versioned
	// q35, because the device state is only valid for the machine version that wrote it.
	// CreateTemplate fills it in.
	MachineType string
	// Accel is the accelerator the template ran under (never auto); clones run under the
	// same one. CreateTemplate fills it in.
	Accel string
	// ShareKept tells that the template's guest may mount its 9p share before the save:
	// the emulator carries the mount's state over, and each clone finds the share mounted,
	// its own share directory behind it. CreateTemplate fills it in and tells park.
	ShareKept bool
	// Translations is a file of the emulator's code translated for the template's guest
	// (TCG), which clones restore before they run instead of translating it again. The
	// caller names the file; CreateTemplate writes it, or empties the field when this
	// emulator or VM cannot have one (KVM, more than one vCPU, a QEMU not built by runv).
	Translations string
}

// ParkFunc is called with the connected channels of a template VM once it runs. It returns
// once the guest is idle between two commands (for the runv agent: after READY, the version
// handshake and a warm-up); the launcher then snapshots the VM with the host still
// connected (closing the channels park was given does not disconnect them), so that a
// clone's guest finds its host connected. It must not start a pod.
type ParkFunc func(ctx context.Context, ch *Channels, p Park) error

// Park is what a ParkFunc is told about the template it parks.
type Park struct {
	// ShareKept: the guest may mount its 9p share (Snapshot.ShareKept). Otherwise it must
	// not, and it must leave nothing open in the share either way.
	ShareKept bool
	// BeginWarmup, called with the guest idle just before the work a clone will do first
	// (a warm-up), marks where the emulator's translations that the snapshot keeps start
	// (Snapshot.Translations): the boot's stay out. It is never nil.
	BeginWarmup func(context.Context) error
}

// BootTranslationsSaver is a VM that can keep the code its boot translated, for later
// boots of its kind (runv's QEMU under TCG: hypervisor/qemu/boottranslations.go).
type BootTranslationsSaver interface {
	SaveBootTranslations(ctx context.Context) error
}

// SaveBootTranslations has vm keep its boot's translations, if it can and its boot is one
// that saves them. Call it once a cold-booted guest's agent said READY, before the guest
// runs anything of a pod: the saved code is then only the kernel's and the agent's.
func SaveBootTranslations(ctx context.Context, vm VM) error {
	if s, ok := vm.(BootTranslationsSaver); ok {
		return s.SaveBootTranslations(ctx)
	}
	return nil
}

// Templater is implemented by launchers that can turn a booted VM into a template and start
// clones of it. It is separate from Launcher because a template is not a running VM (the
// template VM is stopped for good once saved), and because launchers that cannot snapshot
// simply do not implement it: the caller finds out with a type assertion.
type Templater interface {
	// CreateTemplate cold-boots cfg with its RAM in snap.Memory (which must not exist yet),
	// calls park, and saves the device state to snap.State (which must not exist either),
	// disconnecting only once the template VM is gone. The template VM is then stopped and gone. It returns snap with
	// MachineType and Accel filled in; on error it leaves neither file behind.
	CreateTemplate(ctx context.Context, cfg Config, snap Snapshot, park ParkFunc) (Snapshot, error)
	// Clone starts a VM from a template made from a Config equal to cfg in everything but
	// ID, Dir and ShareDir (the factory checks this). The VM is returned running, its guest
	// parked where the template left it and its channels connected before it ran (so the
	// guest never sees its host away), and its Restored method reports true: no READY will
	// come, and the guest needs the time and fresh entropy.
	Clone(ctx context.Context, cfg Config, snap Snapshot) (VM, error)
}
