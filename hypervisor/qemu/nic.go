package qemu

import (
	"fmt"
	"strconv"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// NICSlots is how many network devices every VM is booted with. A pod's network namespace
// is known only once its first container was created, long after a pooled or cloned VM
// booted, and microvm cannot hot-plug: so the devices are there from the start, each backed
// by a tap that QEMU creates in its own network namespace, and the network package moves
// a tap into the pod's namespace when an interface there needs it. Two cover a pod's
// interface plus one added later (docker network connect, a second CNI attachment); each
// costs the guest a virtio-net device and the host an idle tap.
const NICSlots = 2

// tapName is the name of the tap behind NIC slot i, in QEMU's namespace and, once moved,
// in the pod's (where the "_runv" suffix keeps it apart from the interfaces clients make).
func tapName(i int) string { return "tap" + strconv.Itoa(i) + "_runv" }

// nicArgs are the -netdev/-device pairs of n NICs. QEMU opens each tap itself by name
// (ifname) in its own network namespace, with the virtio-net header so that TSO/GSO and
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
