package qemu

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// NICSlots is how many network devices every VM is booted with. A pod's network namespace
// is known only once its first container was created, long after a pooled or cloned VM
// booted, and microvm cannot hot-plug: so the devices are there from the start, each backed
// by a tap in QEMU's own network namespace (nicTaps), and the network package moves
// a tap into the pod's namespace when an interface there needs it. Two cover a pod's
// interface plus one added later (docker network connect, a second CNI attachment); each
// costs the guest a virtio-net device and the host an idle tap.
const NICSlots = 2

// tapName is the name of the tap behind NIC slot i, in QEMU's namespace and, once moved,
// in the pod's (where the "_runv" suffix keeps it apart from the interfaces clients make).
func tapName(i int) string { return "tap" + strconv.Itoa(i) + "_runv" }

// nicTaps are the taps of a VM's n NICs, each with queues queue pairs.
type nicTaps struct{ n, queues int }

// make creates the taps, persistent, in the calling thread's network namespace, for QEMU
// to open by name (nicArgs) once started there. QEMU could create them itself, but a tap it
// made dies with its descriptor: QEMU's exit then unregisters each device synchronously,
// waiting for RCU grace periods, which made QEMU's exit after SIGKILL take 31-60 ms instead
// of 2-4 ms (docs/performance.md, "Pooled `runv run`: host side"), on the critical path of
// every pod's end. A persistent tap outlives QEMU's descriptor; it goes with its namespace
// (the kernel tears a dead namespace's devices down in the background, in one batch) or,
// once moved into a pod's namespace, with runv's teardown of the mirroring (network.Pod).
func (t nicTaps) make() error {
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if t.queues > 1 {
		// QEMU asks for a multiqueue tap when queues > 1 (nicPair): the device must be one.
		flags |= unix.IFF_MULTI_QUEUE
	}
	for i := 0; i < t.n; i++ {
		if err := makeTap(tapName(i), flags); err != nil {
			return fmt.Errorf("tap of NIC slot %d: %w", i, err)
		}
	}
	return nil
}

// makeTap creates the persistent tap name with flags.
func makeTap(name string, flags uint16) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("make %s persistent: %w", name, err)
	}
	return nil
}

// nicArgs are the -netdev/-device pairs of n NICs. QEMU opens each tap by name (ifname) in
// its own network namespace, where nicTaps.make created them, with the virtio-net header so that TSO/GSO and
// checksum offloads carry large frames between guest and host unsegmented: under TCG that
// is most of the throughput (docs/networking.md).
func nicArgs(n int, microvm bool, queues int) []string {
	var args []string
	for i := 0; i < n; i++ {
		args = append(args, nicPair(i, microvm, queues)...)
	}
	return args
}

// nicPair is the -netdev/-device pair of the NIC in slot i. With queues > 1 the tap and
// the device are multiqueue: one queue pair per vCPU, which the guest's virtio-net driver
// turns on by itself at probe (it enables min(queue pairs, online CPUs)).
func nicPair(i int, microvm bool, queues int) []string {
	dev := "virtio-net-pci,romfile="
	if microvm {
		dev = "virtio-net-device"
	}
	id := "net" + strconv.Itoa(i)
	netdev := "tap,id=" + id + ",ifname=" + tapName(i) + ",script=no,downscript=no,vnet_hdr=on"
	if queues > 1 {
		netdev += ",queues=" + strconv.Itoa(queues)
		dev += ",mq=on"
		if !microvm {
			// MSI-X vectors: one per queue (rx and tx of each pair), the control queue, config.
			dev += ",vectors=" + strconv.Itoa(2*queues+2)
		}
	}
	return []string{"-netdev", netdev, "-device", dev + ",netdev=" + id + ",mac=" + agentproto.NICSlotMAC(i)}
}

// nicQueues is how many queue pairs each NIC of a VM with cpus vCPUs gets.
func nicQueues(cpus int) int { return min(cpus, maxNICQueues) }

// maxNICQueues bounds the queue pairs of a NIC: each costs QEMU a tap file descriptor and
// the guest a pair of virtqueues with their buffers.
const maxNICQueues = 8

// NICsOf describes the NICs of the VM whose QEMU has pid: their taps wait in QEMU's own
// network namespace. It serves processes that drive a VM they did not launch (a pod daemon
// handed a pooled VM).
func NICsOf(pid int) []hypervisor.NIC {
	nics := make([]hypervisor.NIC, NICSlots)
	for i := range nics {
		nics[i] = hypervisor.NIC{Slot: i, Tap: tapName(i), NetNS: fmt.Sprintf("/proc/%d/ns/net", pid)}
	}
	return nics
}

// NICs describes the VM's network devices (hypervisor.NetworkDevices).
func (v *vm) NICs() []hypervisor.NIC { return NICsOf(v.proc.pid) }

var _ hypervisor.NetworkDevices = (*vm)(nil)
