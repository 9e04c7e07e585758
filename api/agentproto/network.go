package agentproto

import "fmt"

// Network is MsgSetupNetwork's payload: the pod's whole network configuration, as mirrored
// from its network namespace on the host. It is declarative: every NIC it does not list is
// taken down and stripped (an interface that left the namespace), every listed one gets
// exactly the identity, addresses, routes and neighbours given.
type Network struct {
	Interfaces []Interface `json:"interfaces,omitempty"`
	// Routes are applied after every interface is up, routes without a gateway first.
	Routes     []Route     `json:"routes,omitempty"`
	Neighbours []Neighbour `json:"neighbours,omitempty"`
}

// Interface is one NIC of the guest and what it mirrors.
type Interface struct {
	// Slot is the guest NIC's index among the VM's network devices: the NIC whose
	// permanent MAC is NICSlotMAC(Slot). The agent renames and re-addresses that device.
	Slot int `json:"slot"`
	// Name, MAC and MTU are the host interface's (e.g. eth0, its veth's MAC, 1400).
	Name string `json:"name"`
	MAC  string `json:"mac"`
	MTU  int    `json:"mtu"`
	// Addresses in CIDR notation, IPv4 and IPv6 (link-local IPv6 is left to the guest
	// kernel: it derives the same one from the same MAC).
	Addresses []string `json:"addresses,omitempty"`
}

// Route is one route of the main table.
type Route struct {
	// Destination in CIDR notation; empty for a default route (then Family says which).
	Destination string `json:"destination,omitempty"`
	Family      int    `json:"family"` // 4 or 6
	Gateway     string `json:"gateway,omitempty"`
	// Device is the interface's name (Interface.Name).
	Device string `json:"device"`
	Source string `json:"source,omitempty"`
	// Scope is the kernel's route scope (0 universe, 253 link, ...).
	Scope  int `json:"scope,omitempty"`
	Metric int `json:"metric,omitempty"`
	// MTU is the route's own MTU (0: the device's).
	MTU int `json:"mtu,omitempty"`
}

// Neighbour is a permanent neighbour (ARP/NDP) entry.
type Neighbour struct {
	IP     string `json:"ip"`
	MAC    string `json:"mac"`
	Device string `json:"device"`
}

// MaxNICs bounds the network devices a VM has and the interfaces a Network may list.
const MaxNICs = 16

// NICSlotMAC is the MAC address QEMU gives the guest NIC in slot i, which stays the
// device's permanent address (IFLA_PERM_ADDRESS) whatever MAC the agent sets later: both
// sides find a NIC by it. It is locally administered and never reaches a wire (the agent
// sets the mirrored interface's MAC before the link goes up).
func NICSlotMAC(i int) string { return fmt.Sprintf("02:72:75:6e:76:%02x", i) }
