// Package network puts a pod's VM on the pod's network: it reads the interfaces, addresses,
// routes and neighbours of the pod's network namespace on the host (what docker, podman or
// CNI configured there), and mirrors each interface onto one of the VM's NICs with a tap in
// that namespace and a tc redirect both ways (the model of Kata Containers and
// firecracker-containerd). Everything goes through netlink; nothing shells out to ip or tc.
//
// The entry points are small so that every pod supervisor can call them: Attach (mirror
// the namespace at a path onto a VM's NICs), Pod.Sync (follow interfaces that came or went),
// Pod.Close (tear down), and Release (tear down from the state directory alone, after the
// process that attached died).
package network

import (
	"errors"
	"fmt"
	"net"
	"sort"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
)

// ErrHostNetwork is returned for a config without a network namespace, which means the
// host's network to a runc user: a VM cannot share it.
var ErrHostNetwork = errors.New("host network")

// NamespaceOf returns the network namespace a container's config asks for: a path, or ""
// for a new one (made by the container's host stand-in). A config without a network
// namespace entry means the host's network, which a VM cannot join: it is refused with an
// error that says so (as Kata does).
func NamespaceOf(spec *specs.Spec) (string, error) {
	if spec != nil && spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				return ns.Path, nil
			}
		}
	}
	return "", fmt.Errorf("%w: the config has no network namespace, which means the host's network (docker --network host, hostNetwork: true); "+
		"a container in a VM cannot share the host's network stack: give it a network namespace (any other network mode): %w",
		ErrHostNetwork, errdefs.ErrInvalidArgument)
}

// link is an interface of the pod's namespace that is mirrored into the VM.
type link struct {
	index int
	iface agentproto.Interface // Slot unset
}

// snapshot is what the pod's namespace holds.
type snapshot struct {
	links      []link
	routes     []agentproto.Route
	neighbours []agentproto.Neighbour
}

// inspect reads the namespace h is bound to. Interfaces are those with an Ethernet address
// (veth, macvlan, ipvlan, tap, bridge ports...), except loopback and the taps in skip
// (ours). Routes are the main table's unicast routes through those interfaces, less those
// the kernel derives from addresses (it derives them again in the guest).
func inspect(h *netlink.Handle, skip map[string]bool) (snapshot, error) {
	var snap snapshot
	all, err := h.LinkList()
	if err != nil {
		return snap, fmt.Errorf("list interfaces: %w", err)
	}
	names := map[int]string{}
	for _, l := range all {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || skip[a.Name] || len(a.HardwareAddr) != 6 || a.EncapType != "ether" {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return snap, fmt.Errorf("interface %s: list addresses: %w", a.Name, err)
		}
		iface := agentproto.Interface{Name: a.Name, MAC: a.HardwareAddr.String(), MTU: a.MTU}
		for _, ad := range addrs {
			// The guest derives the same link-local address from the same MAC.
			if ad.IP.To4() == nil && ad.IP.IsLinkLocalUnicast() {
				continue
			}
			iface.Addresses = append(iface.Addresses, ad.IPNet.String())
		}
		snap.links = append(snap.links, link{index: a.Index, iface: iface})
		names[a.Index] = a.Name

		neighs, err := h.NeighList(a.Index, netlink.FAMILY_ALL)
		if err != nil {
			return snap, fmt.Errorf("interface %s: list neighbours: %w", a.Name, err)
		}
		for _, n := range neighs {
			if n.State&netlink.NUD_PERMANENT == 0 || len(n.HardwareAddr) == 0 || n.IP == nil {
				continue
			}
			snap.neighbours = append(snap.neighbours, agentproto.Neighbour{IP: n.IP.String(), MAC: n.HardwareAddr.String(), Device: a.Name})
		}
	}
	sort.Slice(snap.links, func(i, j int) bool { return snap.links[i].iface.Name < snap.links[j].iface.Name })

	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return snap, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		dev, ok := names[r.LinkIndex]
		if !ok || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 {
			continue
		}
		snap.routes = append(snap.routes, wireRoute(r, dev))
	}
	return snap, nil
}

func wireRoute(r netlink.Route, dev string) agentproto.Route {
	w := agentproto.Route{Family: 4, Device: dev, Scope: int(r.Scope), Metric: r.Priority, MTU: r.MTU}
	if r.Family == netlink.FAMILY_V6 {
		w.Family = 6
	}
	// netlink reports a default route with a nil or an all-zero destination.
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
			w.Destination = r.Dst.String()
		}
	}
	if r.Gw != nil {
		w.Gateway = r.Gw.String()
	}
	if r.Src != nil {
		w.Source = r.Src.String()
	}
	return w
}
