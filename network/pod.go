package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

// Files in a pod's network state directory.
const (
	// nsFile is a bind mount of the pod's network namespace: it keeps the namespace
	// reachable for the teardown even when the process whose /proc/<pid>/ns/net named it
	// (docker's: the container's stand-in) is gone.
	nsFile    = "netns"
	stateFile = "state.json"
)

// filterPrio is the priority of runv's redirect filters, so that teardown deletes exactly
// those, next to filters someone else put on the interface.
const filterPrio = 0x7275

// mirrored is one interface of the pod's namespace mirrored onto a NIC. It is what the
// teardown needs, and is recorded in the state file.
type mirrored struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	Slot  int    `json:"slot"`
	Tap   string `json:"tap"`
	// HomeNS is where the tap waits when it is not mirroring anything (QEMU's namespace).
	HomeNS string `json:"homeNS"`
	// OwnQdisc: runv added the interface's ingress qdisc (else it was there before, and
	// only runv's filter goes).
	OwnQdisc bool `json:"ownQdisc"`
	// Plugged: the NIC was hot-plugged for this interface and is unplugged when it leaves.
	Plugged bool `json:"plugged,omitempty"`
}

// NICPlugger adds NICs to a running VM beyond those it booted with, and removes them
// (QEMU's q35 machine; microvm cannot).
type NICPlugger interface {
	PlugNIC(ctx context.Context) (hypervisor.NIC, error)
	UnplugNIC(ctx context.Context, nic hypervisor.NIC) error
}

type record struct {
	Links []mirrored `json:"links"`
}

// Pod is a pod's network namespace mirrored onto its VM's NICs.
type Pod struct {
	dir  string
	ns   netns.NsHandle
	h    *netlink.Handle
	nics []hypervisor.NIC
	// plugger, if not nil, adds a NIC when an interface finds none free.
	plugger NICPlugger

	mu     sync.Mutex
	rec    record
	closed bool
}

// Attach mirrors every interface of the network namespace at nsPath onto one of nics (or,
// when all are taken, onto a NIC that plugger adds, if not nil), and returns the network
// the guest must configure (agentproto.MsgSetupNetwork). dir is the
// pod's network state directory (created; it must be on a filesystem that takes bind
// mounts). A namespace with loopback only attaches nothing: a loopback-only pod. On error
// nothing is left: no tap in the namespace, no qdisc, no filter, no mount.
func Attach(ctx context.Context, dir, nsPath string, nics []hypervisor.NIC, plugger NICPlugger) (p *Pod, n agentproto.Network, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, n, fmt.Errorf("network state: %w", err)
	}
	if err := bindNamespace(nsPath, filepath.Join(dir, nsFile)); err != nil {
		return nil, n, err
	}
	p, err = open(dir)
	if err != nil {
		unbindNamespace(dir)
		return nil, n, err
	}
	p.nics, p.plugger = nics, plugger
	defer func() {
		if err != nil {
			p.Close()
			p = nil
		}
	}()
	if err := p.save(); err != nil {
		return nil, n, err
	}
	n, err = p.Sync(ctx)
	return p, n, err
}

// open opens the namespace bound in dir.
func open(dir string) (*Pod, error) {
	path := filepath.Join(dir, nsFile)
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in network namespace %s: %w", path, err)
	}
	return &Pod{dir: dir, ns: ns, h: h}, nil
}

// bindNamespace bind-mounts the network namespace at src onto dst (as `ip netns add`
// does), after checking that src is one.
func bindNamespace(src, dst string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(src, &st); err != nil {
		return fmt.Errorf("network namespace %s: %w: %w", src, err, errdefs.ErrInvalidArgument)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("network namespace %s is not a namespace file (nsfs or /proc/<pid>/ns/net): %w", src, errdefs.ErrInvalidArgument)
	}
	if ns, err := netns.GetFromPath(src); err != nil {
		return fmt.Errorf("network namespace %s: %w: %w", src, err, errdefs.ErrInvalidArgument)
	} else {
		ns.Close()
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("network namespace mount point: %w", err)
	}
	f.Close()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		os.Remove(dst)
		return fmt.Errorf("bind-mount network namespace %s on %s: %w", src, dst, err)
	}
	return nil
}

func unbindNamespace(dir string) error {
	path := filepath.Join(dir, nsFile)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (p *Pod) save() error {
	b, err := json.Marshal(p.rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(p.dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("network state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, stateFile)); err != nil {
		return fmt.Errorf("network state: %w", err)
	}
	return nil
}

// Sync brings the mirroring in line with the namespace: an interface that appeared gets a
// free NIC (or a plugged one), one that left gives its NIC back (a plugged one is
// unplugged). It returns the whole network the guest must have now.
func (p *Pod) Sync(ctx context.Context) (agentproto.Network, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n agentproto.Network
	if p.closed {
		return n, fmt.Errorf("network of %s: closed: %w", p.dir, errdefs.ErrFailedPrecondition)
	}
	taps := map[string]bool{}
	for _, nic := range p.nics {
		taps[nic.Tap] = true
	}
	snap, err := inspect(p.h, taps)
	if err != nil {
		return n, fmt.Errorf("network namespace of %s: %w", p.dir, err)
	}
	present := map[int]link{}
	for _, l := range snap.links {
		present[l.index] = l
	}
	// Interfaces that left (or were replaced by another of the same name).
	var keep []mirrored
	var errs []error
	for _, m := range p.rec.Links {
		if l, ok := present[m.Index]; ok && l.iface.Name == m.Name {
			keep = append(keep, m)
			continue
		}
		errs = append(errs, p.unmirror(m, true))
		if m.Plugged {
			errs = append(errs, p.unplug(ctx, m.Slot))
		}
	}
	p.rec.Links = keep
	if err := errors.Join(errs...); err != nil {
		p.save()
		return n, err
	}
	for _, l := range snap.links {
		m, ok := p.lookup(l.index)
		if !ok {
			nic, free := p.freeNIC()
			plugged := false
			if !free {
				if nic, err = p.plug(ctx, l, len(snap.links)); err != nil {
					p.save()
					return n, err
				}
				plugged = true
			}
			if m, err = p.mirror(l, nic); err != nil {
				if plugged {
					err = errors.Join(err, p.unplug(ctx, nic.Slot))
				}
				p.save()
				return n, err
			}
			m.Plugged = plugged
			p.rec.Links = append(p.rec.Links, m)
		} else if err := p.syncMTU(m, l.iface.MTU); err != nil {
			return n, err
		}
		iface := l.iface
		iface.Slot = m.Slot
		n.Interfaces = append(n.Interfaces, iface)
	}
	if err := p.save(); err != nil {
		return n, err
	}
	n.Routes, n.Neighbours = snap.routes, snap.neighbours
	return n, nil
}

func (p *Pod) lookup(index int) (mirrored, bool) {
	for _, m := range p.rec.Links {
		if m.Index == index {
			return m, true
		}
	}
	return mirrored{}, false
}

func (p *Pod) freeNIC() (hypervisor.NIC, bool) {
	used := map[int]bool{}
	for _, m := range p.rec.Links {
		used[m.Slot] = true
	}
	for _, nic := range p.nics {
		if !used[nic.Slot] {
			return nic, true
		}
	}
	return hypervisor.NIC{}, false
}

// plug adds a NIC for interface l, which found none free among the VM's.
func (p *Pod) plug(ctx context.Context, l link, interfaces int) (hypervisor.NIC, error) {
	refuse := func(why error) error {
		return fmt.Errorf("network namespace of %s: interface %s cannot be mirrored: the VM's %d network devices are taken (%d interfaces) and %w",
			p.dir, l.iface.Name, len(p.nics), interfaces, why)
	}
	if p.plugger == nil {
		return hypervisor.NIC{}, refuse(fmt.Errorf("it cannot hot-plug more (q35 VMs launched by runv can): %w", errdefs.ErrFailedPrecondition))
	}
	nic, err := p.plugger.PlugNIC(ctx)
	if err != nil {
		return nic, refuse(fmt.Errorf("plugging one failed: %w", err))
	}
	p.nics = append(p.nics, nic)
	return nic, nil
}

// unplug removes the plugged NIC in slot, whose tap is back in its home namespace.
func (p *Pod) unplug(ctx context.Context, slot int) error {
	if p.plugger == nil {
		return nil
	}
	for i, nic := range p.nics {
		if nic.Slot == slot {
			p.nics = append(p.nics[:i], p.nics[i+1:]...)
			return p.plugger.UnplugNIC(ctx, nic)
		}
	}
	return nil
}

// mirror moves nic's tap into the pod's namespace and redirects everything between it and
// the interface both ways.
func (p *Pod) mirror(l link, nic hypervisor.NIC) (m mirrored, err error) {
	m = mirrored{Name: l.iface.Name, Index: l.index, Slot: nic.Slot, Tap: nic.Tap, HomeNS: nic.NetNS}
	fail := func(what string, err error) error {
		return fmt.Errorf("mirror interface %s onto tap %s: %s: %w", l.iface.Name, nic.Tap, what, err)
	}
	if err := moveLink(nic.NetNS, nic.Tap, p.ns); err != nil {
		return m, fail("move the tap into the pod's namespace", err)
	}
	defer func() {
		if err != nil {
			p.unmirror(m, true)
		}
	}()
	tap, err := p.h.LinkByName(nic.Tap)
	if err != nil {
		return m, fail("find it in the pod's namespace", err)
	}
	// No IPv6 of its own: the tap would send router solicitations and MLD reports into the
	// guest under an address nobody configured.
	if err := p.h.LinkSetIP6AddrGenMode(tap, 1 /* IN6_ADDR_GEN_MODE_NONE */); err != nil {
		return m, fail("disable IPv6 address generation", err)
	}
	// A frame the tap cannot take is silently dropped: it must take what the interface does.
	if err := p.h.LinkSetMTU(tap, l.iface.MTU); err != nil {
		return m, fail(fmt.Sprintf("set MTU %d", l.iface.MTU), err)
	}
	if err := p.h.LinkSetUp(tap); err != nil {
		return m, fail("set up", err)
	}
	if m.OwnQdisc, err = p.addIngress(l.index); err != nil {
		return m, fail("ingress qdisc on "+l.iface.Name, err)
	}
	if _, err := p.addIngress(tap.Attrs().Index); err != nil {
		return m, fail("ingress qdisc on the tap", err)
	}
	if err := p.h.FilterAdd(redirect(l.index, tap.Attrs().Index)); err != nil {
		return m, fail("redirect "+l.iface.Name+" to the tap", err)
	}
	if err := p.h.FilterAdd(redirect(tap.Attrs().Index, l.index)); err != nil {
		return m, fail("redirect the tap to "+l.iface.Name, err)
	}
	return m, nil
}

func (p *Pod) syncMTU(m mirrored, mtu int) error {
	tap, err := p.h.LinkByName(m.Tap)
	if err != nil {
		return fmt.Errorf("tap %s of interface %s: %w", m.Tap, m.Name, err)
	}
	if tap.Attrs().MTU == mtu {
		return nil
	}
	if err := p.h.LinkSetMTU(tap, mtu); err != nil {
		return fmt.Errorf("tap %s of interface %s: set MTU %d: %w", m.Tap, m.Name, mtu, err)
	}
	return nil
}

var ingressHandle = netlink.MakeHandle(0xffff, 0)

// addIngress adds an ingress qdisc to the link unless it has one, and reports whether it did.
func (p *Pod) addIngress(index int) (bool, error) {
	qs, err := p.h.QdiscList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index}})
	if err != nil {
		return false, err
	}
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			return false, nil
		}
	}
	l, err := p.h.LinkByIndex(index)
	if err != nil {
		return false, err
	}
	if err := p.h.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}); err != nil {
		return false, err
	}
	// The kernel gives a device without a transmit queue length (veths made with qlen 0)
	// the default of 1000 when it gets a qdisc: the interface is the client's, it keeps its.
	if after, err := p.h.LinkByIndex(index); err == nil && after.Attrs().TxQLen != l.Attrs().TxQLen {
		if err := p.h.LinkSetTxQLen(after, l.Attrs().TxQLen); err != nil {
			return true, fmt.Errorf("restore transmit queue length %d: %w", l.Attrs().TxQLen, err)
		}
	}
	return true, nil
}

// redirect is `tc filter add dev FROM parent ffff: prio P protocol all u32 match u32 0 0
// action mirred egress redirect dev TO`: every frame that arrives on from leaves through to,
// unseen by the namespace's own stack. (u32: the hosts' kernels may lack cls_matchall.)
func redirect(from, to int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from, Parent: ingressHandle, Priority: filterPrio, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to,
		}},
	}
}

// unmirror removes runv's filter (and qdisc, if runv added it) from the interface, if it is
// still the one mirrored, and takes the tap out of the pod's namespace: back home for the
// NIC to be used again when reuse is set and home still exists, else deleted.
func (p *Pod) unmirror(m mirrored, reuse bool) error {
	var errs []error
	if l, err := p.h.LinkByIndex(m.Index); err == nil && l.Attrs().Name == m.Name {
		f := &netlink.GenericFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: m.Index, Parent: ingressHandle, Priority: filterPrio, Protocol: unix.ETH_P_ALL}, FilterType: "u32"}
		if err := p.h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("interface %s: remove runv's redirect filter: %w", m.Name, err))
		}
		if m.OwnQdisc {
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: m.Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
			if err := p.h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("interface %s: remove runv's ingress qdisc: %w", m.Name, err))
			}
		}
	}
	if tap, err := p.h.LinkByName(m.Tap); err == nil {
		moved := false
		if reuse {
			if home, err := netns.GetFromPath(m.HomeNS); err == nil {
				// Set down first: the tap carries its qdisc and filters away with it, and
				// up again in QEMU's namespace nothing would be mirrored.
				p.h.LinkSetDown(tap)
				moved = p.h.LinkSetNsFd(tap, int(home)) == nil
				home.Close()
			}
		}
		if !moved {
			if err := p.h.LinkDel(tap); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("remove tap %s: %w", m.Tap, err))
			}
		}
	}
	return errors.Join(errs...)
}

// moveLink moves the link named name from the namespace at path into to.
func moveLink(path, name string, to netns.NsHandle) error {
	from, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer from.Close()
	h, err := netlink.NewHandleAt(from)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", name, path, err)
	}
	if err := h.LinkSetNsFd(l, int(to)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Close removes everything runv added to the pod's namespace (taps, filters, its qdiscs)
// and releases the namespace. The namespace's own interfaces keep what they had. It is
// idempotent.
func (p *Pod) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	for _, m := range p.rec.Links {
		errs = append(errs, p.unmirror(m, false))
	}
	p.h.Close()
	p.ns.Close()
	errs = append(errs, unbindNamespace(p.dir))
	if err := os.Remove(filepath.Join(p.dir, stateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network teardown of %s: %w", p.dir, err)
	}
	os.Remove(p.dir)
	return nil
}

// Release tears down the network recorded in dir by a process that died before it could
// (a killed pod daemon). Nothing recorded is not an error.
func Release(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		unbindNamespace(dir)
		os.Remove(dir)
		return nil
	}
	if err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("network teardown: %s: %w", filepath.Join(dir, stateFile), err)
	}
	p, err := open(dir)
	if err != nil {
		// The namespace is gone, and with it everything runv put in it.
		os.Remove(filepath.Join(dir, stateFile))
		unbindNamespace(dir)
		os.Remove(dir)
		return nil
	}
	p.rec = rec
	return p.Close()
}
