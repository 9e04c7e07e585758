package qemu

import (
	"slices"
	"strconv"
	"strings"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// spec is everything the command line depends on, resolved: buildArgs neither probes nor
// reads the host, so it is a pure function and tested as a table.
type spec struct {
	cfg    hypervisor.Config // defaulted and validated
	accel  string            // hypervisor.AccelKVM or hypervisor.AccelTCG, never auto
	tscKHz int               // host TSC frequency, passed to microvm guests under TCG
	// serial is the -serial backend; empty means the console pipe (consoleFD). The KVM probe
	// reads the console from a pipe instead ("stdio").
	serial string

	// Templates and clones (see template.go). Everything else on the command line is the
	// same for a template and its clones, devices included and in the same order: the
	// device state only loads into an identical device set.

	// machineType replaces cfg.Machine in -machine: the versioned type (pc-q35-7.2) a
	// template and its clones run. Empty: cfg.Machine.
	machineType string
	// memFile puts the guest RAM in a file: memory-backend-file mapped shared (memShared,
	// the template writes the booted RAM into it) or private (a clone's copy-on-write view).
	memFile   string
	memShared bool
	// incoming starts a clone: no -kernel, -initrd or -append (the RAM already holds the
	// booted guest, and leaving them out spares mapping the kernel per VM), and QEMU waits
	// for migrate-incoming ("-incoming defer": x-ignore-shared has to be set first, and
	// QEMU 7.2 cannot set it from the command line).
	incoming bool
	// keepShare: the 9p device migrates the guest's fids of a mounted share (a template
	// saved with its share mounted; sharefids.go). Only on the template's side: a clone's
	// QEMU loads them whenever the state holds them.
	keepShare bool
	// translations: a template or a direct boot saves the code TCG translates for its guest
	// into the file of descriptor translationsFD; a direct boot restores it from there, a
	// clone from cloneTranslationsFD (translations.go).
	translations translationsUse
	// nics is how many network devices the VM gets (see nic.go); the KVM probe needs none.
	nics int
	// inheritSockets: QEMU inherits its QMP and channel sockets from runv, listening, as
	// descriptors qmpFD, controlFD and streamFD (vmsockets.go). Otherwise (the KVM probe, a
	// bare boot by a bench tool) QEMU makes them at their paths.
	inheritSockets bool
}

// sandboxArg is QEMU's own seccomp filter: the syscalls of obsolete features, raising
// privileges (set*id, which also sets no_new_privs), spawning processes and changing
// resource limits or CPU affinity are denied, so a guest that takes QEMU over holds a
// process that can do none of them. No VM needs to spawn: a template saves its device
// state to a socket runv listens on (migstate.go), a clone loads it from a descriptor.
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny,spawn=deny"

// consoleChardev is the id of the chardev of the guest's console.
const consoleChardev = "console"

// cloneNoAnnounce turns off the announce after a clone's incoming migration (buildArgs).
var cloneNoAnnounce = []string{"-global", "migration.announce-rounds=0"}

// memBackendID is the id of the file memory backend of templates and clones.
const memBackendID = "mem"

// tcgCPU is the vCPU model of a microvm under TCG: QEMU's default (qemu64) plus ARAT, the
// local APIC timer that keeps running in deep C-states. Without ARAT Linux must assume the
// LAPIC timer stops when the CPU idles and needs a broadcast timer (an HPET, which microvm
// does not have; q35 does, and keeps QEMU's default) to leave periodic mode: the guest then
// took its 250 Hz tick forever, idle or not, and each tick woke QEMU's main loop and vCPU
// thread. An idle pooled VM or pod burnt
// ~12-22 ms of QEMU CPU per second; with ARAT (and NO_HZ_IDLE in the kernel) 2-3 ms
// (docs/performance.md, "Bursts, stop 15"). TCG emulates ARAT's timer as it does the rest
// of the LAPIC: nothing in the guest changes but its tick.
const tcgCPU = "qemu64,+arat"

// Kernel parameters the runtime always passes. panic=-1 with -no-reboot turns a guest
// panic into a QEMU exit instead of a VM that spins forever. pty.legacy_count=0: the
// kernel's 256 BSD pty pairs took 33 ms of every boot under TCG to register, and nothing in
// a guest uses them (containers get Unix98 ptys from their devpts).
var baseKernelParams = []string{"console=ttyS0", "quiet", "panic=-1", "pty.legacy_count=0"}

// qemuAPICTimerKHz is the input clock of QEMU's emulated local APIC timer: it counts
// QEMU_CLOCK_VIRTUAL's nanoseconds (hw/intel/apic.c), 1 GHz before the divider; a guest's
// own calibration finds the same (4 000 022 counts a 4 ms tick).
const qemuAPICTimerKHz = 1000000

// The agent's ports are these numbers of the guest's only virtio-serial device (0 is a
// console's), which is the guest's first virtio device: the guest names their nodes
// /dev/vport0p<nr>, and the kernel command line tells the agent so (portsParam).
const (
	controlPortNr = 1
	streamPortNr  = 2
)

// portsParam names the agent's port nodes (agentproto.PortsParam): opening them, the agent
// reads no sysfs to find its ports by name, ~150 translated blocks of a cold guest's boot
// (~1 ms under TCG). Should the guest have named them otherwise, the agent finds no node
// there and looks the names up.
var portsParam = agentproto.PortsParam + "=vport0p" + strconv.Itoa(controlPortNr) + ",vport0p" + strconv.Itoa(streamPortNr)

// virtioDevice is the device type of virtio device name (virtio-9p, ...) on machine: its
// virtio-mmio transport on microvm, PCI on q35.
func virtioDevice(name, machine string) string {
	if machine == hypervisor.MachineMicroVM {
		return name + "-device"
	}
	return name + "-pci"
}

// buildArgs returns QEMU's arguments (without the binary) for s.
func buildArgs(s spec) []string {
	c := s.cfg
	p := pathsIn(c.Dir)
	microvm := c.Machine == hypervisor.MachineMicroVM
	dev := func(name string) string { return virtioDevice(name, c.Machine) }
	serial := s.serial
	if serial == "" {
		serial = "chardev:" + consoleChardev
	}

	args := []string{
		"-sandbox", sandboxArg,
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest reboot is a guest that wants to stop: QEMU exits instead.
		"-no-reboot",
		"-name", escape(c.ID),
	}
	machine := c.Machine
	if s.machineType != "" {
		machine = s.machineType
	}
	memBackend := ""
	if s.memFile != "" {
		memBackend = ",memory-backend=" + memBackendID
	}
	// -accel when the accelerator takes properties: QEMU refuses it beside -machine accel=.
	accel := ",accel=" + s.accel
	if accelArgs := s.translations.args(s.incoming); accelArgs != nil {
		accel = ""
		args = append(args, accelArgs...)
	}
	if microvm {
		// pit/pic off and no option ROMs: fastest microvm boot. The RTC stays on: without
		// it the guest spends a second timing out on CMOS reads. force-legacy=false makes the
		// virtio-mmio devices modern (virtio 1.0), which vhost-user devices require.
		args = append(args,
			"-machine", machine+",x-option-roms=off,pit=off,pic=off,isa-serial=on"+accel+memBackend,
			"-global", "virtio-mmio.force-legacy=false")
	} else {
		args = append(args, "-machine", machine+accel+memBackend)
	}
	if s.accel == hypervisor.AccelKVM {
		args = append(args, "-cpu", "host")
	} else if s.tcgMicroVM() {
		args = append(args, "-cpu", tcgCPU)
	}
	args = append(args, "-m", memoryArg(c))
	if s.memFile != "" {
		share := "off"
		if s.memShared {
			share = "on"
		}
		args = append(args, "-object", "memory-backend-file,id="+memBackendID+",size="+mib(c.MemoryMiB)+
			",mem-path="+escape(s.memFile)+",share="+share)
	}
	args = append(args, "-smp", smpArg(c))
	if !s.incoming {
		// -kernel, -initrd and -append take their value verbatim (no option-list parsing).
		args = append(args,
			"-kernel", c.Kernel,
			"-initrd", c.Initrd,
			"-append", strings.Join(kernelParams(s), " "))
	}
	if s.serial == "" {
		// The guest's console goes to a pipe that runv drains into console.log up to
		// maxConsoleLog (console.go): a guest writing to its serial port without end must not
		// fill the host's disk. QEMU opens it as the file of fd set consoleFD (-add-fd):
		// "/dev/fd/3" would need /proc, which QEMU's jail does not have (jail.go); append=on
		// because a pipe cannot be truncated.
		fd := strconv.Itoa(consoleFD)
		args = append(args, "-add-fd", "fd="+fd+",set="+fd,
			"-chardev", "file,id="+consoleChardev+",path=/dev/fdset/"+fd+",append=on")
	}
	args = append(args,
		"-serial", serial,
		"-device", dev("virtio-serial")+",id=vser0",
		"-chardev", "socket,id=ctl,"+socketAddr(s, controlFD, p.Control)+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,nr="+strconv.Itoa(controlPortNr)+",chardev=ctl,name="+agentproto.ControlPortName,
		"-chardev", "socket,id=stream,"+socketAddr(s, streamFD, p.Stream)+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,nr="+strconv.Itoa(streamPortNr)+",chardev=stream,name="+agentproto.StreamPortName,
		"-fsdev", "local,id=fs0,path="+escape(c.ShareDir)+",security_model=none",
		"-device", dev("virtio-9p")+",fsdev=fs0,mount_tag="+agentproto.ShareTag+keepShareProp(s.keepShare),
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", dev("virtio-rng")+",rng=rng0",
	)
	args = append(args, nicArgs(s.nics, microvm, nicQueues(c.CPUs))...)
	if !microvm && s.nics > 0 {
		args = append(args, nicPortArgs(NICPorts)...)
	}
	if s.inheritSockets {
		args = append(args, "-chardev", "socket,id=qmp,"+socketAddr(s, qmpFD, p.QMP)+",server=on,wait=off",
			"-mon", "chardev=qmp,mode=control")
	} else {
		args = append(args, "-qmp", "unix:"+escape(p.QMP)+",server=on,wait=off")
	}
	args = append(args, "-pidfile", p.PID)
	if s.incoming {
		args = append(args, "-incoming", "defer")
		// No announce after the clone's state loads: it is for a migrated guest whose peers
		// must learn where its addresses went, and a clone has none yet (its pod's network
		// is configured after STARTPOD). With rounds > 0 the guest's virtio-net is told to
		// announce itself, and its netlink notifications of both NICs and IPv6 neighbour
		// advertisements (~500 translation blocks, nothing else in a pod's start runs them)
		// ran on every clone's critical path; QEMU's own RARP packets go too.
		args = append(args, cloneNoAnnounce...)
	}
	return args
}

// tcgMicroVM reports whether s is a microvm under TCG: the machine that needs the TSC's
// frequency given, runs tcgCPU, and the kernel parameters that go with it (kernelParams).
func (s spec) tcgMicroVM() bool {
	return s.cfg.Machine == hypervisor.MachineMicroVM && s.accel == hypervisor.AccelTCG
}

func kernelParams(s spec) []string {
	params := append(slices.Clone(baseKernelParams), portsParam)
	// Under TCG microvm has no HPET or PM timer to calibrate the TSC against and the guest
	// hangs in calibration; the emulated TSC runs at the host's rate, so tell it. Under KVM
	// kvmclock provides the frequency, and q35 has HPET.
	//
	// tsc=reliable: the guest's only other clocksource is then jiffies, and on a loaded
	// host TCG delivers timer ticks late, so the clocksource watchdog finds the TSC "skewed"
	// against jiffies, marks it unstable and switches to refined-jiffies for good: every
	// clock read and timer in the guest then has 4 ms granularity (every sleep and poll of
	// the agent and of container programs rounds up to a tick), and guest time runs slow.
	// The emulated TSC follows the host's clock, so it is the one to trust.
	if s.tcgMicroVM() && s.tscKHz > 0 {
		params = append(params, "tsc_early_khz="+strconv.Itoa(s.tscKHz), "tsc=reliable")
	}
	if s.accel == hypervisor.AccelTCG {
		// noreplace-smp: a kernel booting on one vCPU rewrites every LOCK prefix of its
		// text to run uniprocessor; under TCG each rewrite invalidates translated code
		// (60-80 ms of every boot), and it saves nothing there: TCG translates a locked
		// instruction as a plain one when the machine has a single vCPU.
		params = append(params, "noreplace-smp")
	}
	if s.tcgMicroVM() {
		// highres=off: with tcgCPU's ARAT the guest can stop its tick when idle (see there),
		// and would also switch its timers to high resolution. That made every sleep of the
		// agent's Go runtime (its sysmon polls from 20 us) a real wake-up of the vCPU:
		// ~10 % more QEMU CPU in a pooled VM's warm-up and in the pods of a burst
		// (docs/performance.md, "Bursts, stop 15"). Off, the timers keep the tick's 4 ms
		// resolution that they had before the tick could stop.
		params = append(params, "highres=off")
		// The local APIC timer is a microvm guest's only clock event device, and the kernel
		// calibrates it by busy-waiting 100 ms against the TSC: a vCPU descheduled by a
		// loaded host during that wait sees the TSC jump while the APIC counted nothing,
		// and the kernel disables the timer as "too slow"; the guest then hangs at its
		// first wait on time (docs/reliability.md, "A guest without a timer"). runv's
		// kernel takes the frequency instead (kernel-config/patches) and skips the
		// calibration, which also takes its 100 ms off every cold boot. A kernel without
		// the patch hands the parameter to init's environment and calibrates as before.
		params = append(params, "lapic_timer_khz="+strconv.Itoa(qemuAPICTimerKHz))
	}
	return append(params, s.cfg.KernelParams...)
}

func memoryArg(c hypervisor.Config) string {
	if c.Machine == hypervisor.MachineQ35 && c.MaxMemoryMiB > c.MemoryMiB {
		return "size=" + mib(c.MemoryMiB) + ",slots=" + strconv.Itoa(memorySlots) + ",maxmem=" + mib(c.MaxMemoryMiB)
	}
	return mib(c.MemoryMiB)
}

func smpArg(c hypervisor.Config) string {
	if c.Machine == hypervisor.MachineQ35 && c.MaxCPUs > c.CPUs {
		return "cpus=" + strconv.Itoa(c.CPUs) + ",maxcpus=" + strconv.Itoa(c.MaxCPUs)
	}
	return strconv.Itoa(c.CPUs)
}

// socketAddr is a socket chardev's address: the inherited descriptor fd, or path.
func socketAddr(s spec, fd int, path string) string {
	if s.inheritSockets {
		return "fd=" + strconv.Itoa(fd)
	}
	return "path=" + escape(path)
}

// escape quotes a value inside a QEMU option list, where a comma separates options and
// ",," stands for a literal comma.
func escape(v string) string { return strings.ReplaceAll(v, ",", ",,") }
