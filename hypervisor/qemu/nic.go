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
func nicArgs(n int, microvm bool) []string {
	var args []string
	for i := 0; i < n; i++ {
		dev := "virtio-net-pci,romfile="
		if microvm {
			dev = "virtio-net-device"
		}
		id := "net" + strconv.Itoa(i)
		args = append(args,
			"-netdev", "tap,id="+id+",ifname="+tapName(i)+",script=no,downscript=no,vnet_hdr=on",
			"-device", dev+",netdev="+id+",mac="+agentproto.NICSlotMAC(i))
	}
	return args
}

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
