package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
)

// setupNetwork handles SETUPNETWORK: the VM's NICs take the identity, addresses, routes and
// neighbours of the pod's host interfaces. Every container of the pod runs in the VM's
// network namespace, so this is the pod's network.
func (a *Agent) setupNetwork(ctx context.Context, req *Request) (any, error) {
	var n agentproto.Network
	if err := req.Decode(&n); err != nil {
		return nil, err
	}
	if err := validateNetwork(n); err != nil {
		return nil, withKind(agentproto.KindInvalid, err)
	}
	if err := applyNetwork(n); err != nil {
		return nil, err
	}
	a.log.Infof("network: %d interfaces, %d routes, %d neighbours", len(n.Interfaces), len(n.Routes), len(n.Neighbours))
	return nil, nil
}

// warmupNetwork runs SETUPNETWORK's path once in a VM that has no pod yet (WARMUP), with
// a throwaway configuration on the NIC of slot 0 like a CRI pod's (documentation
// addresses, RFC 5737 and 3849; a default route), then takes it back: the NIC ends down,
// without addresses or routes, with its slot's MAC, named eth0 (the other NICs runvnicN). Under TCG a pod's SETUPNETWORK
// otherwise pays QEMU's translation of the netlink, rtnetlink and virtio-net code it runs
// first (most of its ~70 ms of guest time, docs/performance.md). The VM's taps are
// connected to nothing before a pod's network is mirrored: what the NIC sends goes
// nowhere.
func warmupNetwork() error {
	slots, err := nicSlots()
	if err != nil {
		return err
	}
	if _, ok := slots[0]; !ok {
		return nil // a VM without NICs
	}
	const name = "eth0"
	defer fastMLDReports(0)()
	err = applyNetwork(agentproto.Network{
		Interfaces: []agentproto.Interface{{Slot: 0, Name: name, MAC: "02:00:5e:00:53:01", MTU: 1500,
			Addresses: []string{"192.0.2.2/24", "2001:db8::2/64"}}},
		Routes: []agentproto.Route{{Family: 4, Gateway: "192.0.2.1", Device: name}},
	})
	// Taken back also when it failed half-way. The NIC keeps the name eth0, which a pod's
	// first interface mostly has (CRI, docker): its SETUPNETWORK then renames nothing (a
	// rename waits for an RCU grace period in the guest kernel: 10-20 ms under TCG).
	err = errors.Join(err, applyNetwork(agentproto.Network{}))
	if slots, lerr := nicSlots(); lerr == nil {
		mac, _ := net.ParseMAC(agentproto.NICSlotMAC(0))
		err = errors.Join(err, netlink.LinkSetHardwareAddr(slots[0], mac), netlink.LinkSetName(slots[0], name))
	}
	if err != nil {
		return fmt.Errorf("network warm-up: %w", err)
	}
	return nil
}

// fastMLDReports has the NIC of slot send its IPv6 multicast (MLD) reports within a
// millisecond instead of at random up to a second after a change, until the returned
// function puts the kernel's intervals back (under the NIC's name then: the warm-up
// renames it). The warm-up's address joins and leaves a
// multicast group; its reports, sent from a delayed work even once the NIC is down (into
// its noop qdisc), were still scheduled when a template was saved, and every clone then
// ran them on its pod's path: ~250 translation blocks of MLD, neighbour and xmit code
// (docs/performance.md, "Template clones: the share kept mounted, success off the console,
// stop 22"). Nothing leaves the VM: its taps are connected to nothing before
// a pod's network is mirrored.
func fastMLDReports(slot int) (restore func()) {
	// The NIC's sysctl directory, looked up when it is needed: at each end.
	confDir := func() string {
		if slots, err := nicSlots(); err == nil {
			if l, ok := slots[slot]; ok {
				return "/proc/sys/net/ipv6/conf/" + l.Attrs().Name + "/"
			}
		}
		return ""
	}
	dir := confDir()
	if dir == "" {
		return func() {}
	}
	saved := map[string][]byte{}
	for _, knob := range []string{"mldv2_unsolicited_report_interval", "mldv1_unsolicited_report_interval"} {
		old, err := os.ReadFile(dir + knob)
		if err != nil {
			continue // a kernel without IPv6
		}
		if os.WriteFile(dir+knob, []byte("1"), 0) == nil {
			saved[knob] = old
		}
	}
	return func() {
		dir := confDir()
		if dir == "" {
			return
		}
		for knob, old := range saved {
			_ = os.WriteFile(dir+knob, old, 0)
		}
	}
}

// validateNetwork checks everything before anything is changed, so that a bad request
// leaves the guest's network as it was.
func validateNetwork(n agentproto.Network) error {
	if len(n.Interfaces) > agentproto.MaxNICs {
		return fmt.Errorf("%d interfaces: at most %d", len(n.Interfaces), agentproto.MaxNICs)
	}
	names := map[string]bool{}
	slots := map[int]bool{}
	for _, ifc := range n.Interfaces {
		if ifc.Slot < 0 || ifc.Slot >= agentproto.MaxNICs || slots[ifc.Slot] {
			return fmt.Errorf("interface %q: slot %d is out of range or taken twice", ifc.Name, ifc.Slot)
		}
		slots[ifc.Slot] = true
		if !validLinkName(ifc.Name) || ifc.Name == "lo" || names[ifc.Name] {
			return fmt.Errorf("interface name %q: invalid or duplicate", ifc.Name)
		}
		names[ifc.Name] = true
		if _, err := net.ParseMAC(ifc.MAC); err != nil {
			return fmt.Errorf("interface %s: MAC %q: %w", ifc.Name, ifc.MAC, err)
		}
		if ifc.MTU < 68 || ifc.MTU > 65535 {
			return fmt.Errorf("interface %s: MTU %d is out of range (68-65535)", ifc.Name, ifc.MTU)
		}
		for _, addr := range ifc.Addresses {
			if _, err := netlink.ParseAddr(addr); err != nil {
				return fmt.Errorf("interface %s: address %q: %w", ifc.Name, addr, err)
			}
		}
	}
	for _, r := range n.Routes {
		if !names[r.Device] {
			return fmt.Errorf("route %+v: device %q is not one of the interfaces", r, r.Device)
		}
		if _, err := toRoute(r, 1); err != nil {
			return err
		}
	}
	for _, nb := range n.Neighbours {
		if !names[nb.Device] {
			return fmt.Errorf("neighbour %s: device %q is not one of the interfaces", nb.IP, nb.Device)
		}
		if net.ParseIP(nb.IP) == nil {
			return fmt.Errorf("neighbour %q: not an IP address", nb.IP)
		}
		if _, err := net.ParseMAC(nb.MAC); err != nil {
			return fmt.Errorf("neighbour %s: MAC %q: %w", nb.IP, nb.MAC, err)
		}
	}
	return nil
}

func validLinkName(s string) bool {
	if s == "" || len(s) >= unix.IFNAMSIZ || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if c == '/' || c == ':' || c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// nicSlots finds the VM's network devices by their permanent MAC (agentproto.NICSlotMAC).
func nicSlots() (map[int]netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	bySlotMAC := map[string]int{}
	for i := 0; i < agentproto.MaxNICs; i++ {
		bySlotMAC[agentproto.NICSlotMAC(i)] = i
	}
	out := map[int]netlink.Link{}
	for _, l := range links {
		perm := l.Attrs().PermHWAddr
		if len(perm) == 0 {
			perm = l.Attrs().HardwareAddr
		}
		if i, ok := bySlotMAC[perm.String()]; ok {
			out[i] = l
		}
	}
	return out, nil
}

// plugWait bounds the wait for a NIC the host has just hot-plugged: the guest's PCI hot-plug
// driver enumerates it and virtio-net probes it, which under TCG on a loaded host takes
// seconds.
const plugWait = 60 * time.Second

// waitSlots returns the NICs once every slot of the interfaces is among them, or fails
// after plugWait naming the first missing one.
func waitSlots(ifcs []agentproto.Interface) (map[int]netlink.Link, error) {
	deadline := time.Now().Add(plugWait)
	for {
		slots, err := nicSlots()
		if err != nil {
			return nil, err
		}
		missing := -1
		for i, ifc := range ifcs {
			if _, ok := slots[ifc.Slot]; !ok {
				missing = i
				break
			}
		}
		if missing < 0 {
			return slots, nil
		}
		if time.Now().After(deadline) {
			ifc := ifcs[missing]
			return nil, withKind(agentproto.KindNotFound, fmt.Errorf("interface %s: the VM has no network device in slot %d (it has %d; waited %s for a hot-plugged one)", ifc.Name, ifc.Slot, len(slots), plugWait))
		}
		time.Sleep(20 * time.Millisecond) // a poll with a deadline: 20 ms is little beside a hot-plug
	}
}

func applyNetwork(n agentproto.Network) error {
	slots, err := waitSlots(n.Interfaces)
	if err != nil {
		return err
	}
	want := map[int]agentproto.Interface{}
	for _, ifc := range n.Interfaces {
		want[ifc.Slot] = ifc
	}
	// Renames first, through temporary names: the kernel named the NICs eth0, eth1... in
	// probe order, and slot 1 may have to become eth0. A listed NIC moves out of the way
	// only if another one wants its name; a NIC no interface is listed for is taken down,
	// stripped and named for its slot (runvnicN). What is so already is left alone: each
	// netlink request costs the guest milliseconds under TCG.
	wanted := map[string]int{}
	for _, ifc := range n.Interfaces {
		wanted[ifc.Name] = ifc.Slot
	}
	order := make([]int, 0, len(slots))
	for i := range slots {
		order = append(order, i)
	}
	sort.Ints(order)
	for _, i := range order {
		l := slots[i]
		ifc, listed := want[i]
		name := l.Attrs().Name
		if _, nameWanted := wanted[name]; listed && (name == ifc.Name || !nameWanted) {
			continue // its own name already, or one configureLink renames it from at once
		}
		if l.Attrs().Flags&net.FlagUp != 0 {
			if err := netlink.LinkSetDown(l); err != nil {
				return fmt.Errorf("NIC slot %d (%s): set down: %w", i, name, err)
			}
		}
		if !listed {
			// No longer in the pod's namespace: no address, no route, no traffic.
			if err := flushAddrs(l); err != nil {
				return err
			}
		}
		if tmp := fmt.Sprintf("runvnic%d", i); name != tmp {
			if err := netlink.LinkSetName(l, tmp); err != nil {
				return fmt.Errorf("NIC slot %d (%s): rename to %s: %w", i, name, tmp, err)
			}
		}
	}
	for _, i := range order {
		ifc, listed := want[i]
		if !listed {
			continue
		}
		if err := configureLink(i, ifc); err != nil {
			return err
		}
	}
	return applyRoutes(n)
}

// configureLink gives the NIC in slot i the interface's name, MAC, MTU and addresses, and
// brings it up.
func configureLink(slot int, ifc agentproto.Interface) error {
	slots, err := nicSlots()
	if err != nil {
		return err
	}
	l := slots[slot]
	fail := func(what string, err error) error {
		return fmt.Errorf("interface %s (NIC slot %d): %s: %w", ifc.Name, slot, what, err)
	}
	mac, _ := net.ParseMAC(ifc.MAC)
	if l.Attrs().Name != ifc.Name || l.Attrs().HardwareAddr.String() != mac.String() {
		if l.Attrs().Flags&net.FlagUp != 0 {
			if err := netlink.LinkSetDown(l); err != nil {
				return fail("set down", err)
			}
		}
		if l.Attrs().Name != ifc.Name {
			if err := netlink.LinkSetName(l, ifc.Name); err != nil {
				return fail("rename", err)
			}
		}
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return fail("set MAC "+ifc.MAC, err)
		}
		if l, err = netlink.LinkByName(ifc.Name); err != nil {
			return fail("look up", err)
		}
	}
	if err := netlink.LinkSetMTU(l, ifc.MTU); err != nil {
		return fail(fmt.Sprintf("set MTU %d", ifc.MTU), err)
	}
	// The pod's addresses were checked on the host; duplicate address detection would only
	// delay the link-local address (and every IPv6 connection) by a second or two.
	if err := writeExisting(filepath.Join("/proc/sys/net/ipv6/conf", ifc.Name, "accept_dad"), "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail("disable IPv6 DAD", err)
	}
	if err := syncAddrs(l, ifc.Addresses); err != nil {
		return fail("addresses", err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fail("set up", err)
	}
	return nil
}

// syncAddrs makes l's addresses exactly want (IPv6 link-local ones are the kernel's).
func syncAddrs(l netlink.Link, want []string) error {
	have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	wanted := map[string]bool{}
	for _, w := range want {
		a, _ := netlink.ParseAddr(w)
		wanted[a.IPNet.String()] = true
	}
	present := map[string]bool{}
	for _, a := range have {
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue
		}
		if wanted[a.IPNet.String()] {
			present[a.IPNet.String()] = true
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove %s: %w", a.IPNet, err)
		}
	}
	for _, w := range want {
		a, _ := netlink.ParseAddr(w)
		if present[a.IPNet.String()] {
			continue
		}
		if a.IP.To4() == nil {
			a.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s: %w", w, err)
		}
	}
	return nil
}

func flushAddrs(l netlink.Link) error {
	return syncAddrs(l, nil)
}

// toRoute converts a wire route for the link with index link.
func toRoute(r agentproto.Route, link int) (*netlink.Route, error) {
	nr := &netlink.Route{LinkIndex: link, Scope: netlink.Scope(r.Scope), Priority: r.Metric, MTU: r.MTU, Table: unix.RT_TABLE_MAIN}
	switch r.Family {
	case 4:
		nr.Family = netlink.FAMILY_V4
	case 6:
		nr.Family = netlink.FAMILY_V6
	default:
		return nil, fmt.Errorf("route %+v: family %d is neither 4 nor 6", r, r.Family)
	}
	if r.Destination != "" {
		_, dst, err := net.ParseCIDR(r.Destination)
		if err != nil {
			return nil, fmt.Errorf("route %+v: destination: %w", r, err)
		}
		nr.Dst = dst
	}
	for _, f := range []struct {
		s  string
		ip *net.IP
	}{{r.Gateway, &nr.Gw}, {r.Source, &nr.Src}} {
		if f.s == "" {
			continue
		}
		if *f.ip = net.ParseIP(f.s); *f.ip == nil {
			return nil, fmt.Errorf("route %+v: %q is not an IP address", r, f.s)
		}
	}
	return nr, nil
}

// applyRoutes replaces the routes of the pod's interfaces (those the kernel made for their
// addresses aside) by the host's, then sets the permanent neighbours.
func applyRoutes(n agentproto.Network) error {
	index := map[string]int{}
	for _, ifc := range n.Interfaces {
		l, err := netlink.LinkByName(ifc.Name)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifc.Name, err)
		}
		index[ifc.Name] = l.Attrs().Index
	}
	var want []*netlink.Route
	for _, r := range n.Routes {
		nr, err := toRoute(r, index[r.Device])
		if err != nil {
			return err
		}
		want = append(want, nr)
	}
	// A gateway must be reachable when its route is added: device routes go first.
	sort.SliceStable(want, func(i, j int) bool { return want[i].Gw == nil && want[j].Gw != nil })
	for _, idx := range index {
		have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, h := range have {
			if h.Protocol == unix.RTPROT_KERNEL || wantedRoute(want, h) {
				continue
			}
			if err := netlink.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("remove stale route %s: %w", h, err)
			}
		}
	}
	for _, r := range want {
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s: %w", r, err)
		}
	}
	for _, nb := range n.Neighbours {
		mac, _ := net.ParseMAC(nb.MAC)
		if err := netlink.NeighSet(&netlink.Neigh{
			LinkIndex: index[nb.Device], State: netlink.NUD_PERMANENT, IP: net.ParseIP(nb.IP), HardwareAddr: mac,
		}); err != nil {
			return fmt.Errorf("neighbour %s lladdr %s dev %s: %w", nb.IP, nb.MAC, nb.Device, err)
		}
	}
	return nil
}

func wantedRoute(want []*netlink.Route, h netlink.Route) bool {
	for _, w := range want {
		if w.LinkIndex == h.LinkIndex && sameNet(w.Dst, h.Dst) && w.Gw.Equal(h.Gw) {
			return true
		}
	}
	return false
}

// sameNet compares destinations, nil (default) equal to 0.0.0.0/0 and ::/0: netlink
// reports a default route with either.
func sameNet(a, b *net.IPNet) bool {
	isDefault := func(n *net.IPNet) bool {
		if n == nil {
			return true
		}
		ones, _ := n.Mask.Size()
		return ones == 0 && n.IP.IsUnspecified()
	}
	if isDefault(a) || isDefault(b) {
		return isDefault(a) && isDefault(b)
	}
	return a.String() == b.String()
}
