package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/errdefs"
	"github.com/runv-project/runv/hypervisor"
)

func TestNamespaceOf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    *specs.Spec
		path    string
		refused bool
	}{
		{"by path", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/netns/x"}}}}, "/run/netns/x", false},
		{"new", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}}}}, "", false},
		{"host network", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}, "", true},
		{"no linux section", &specs.Spec{}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, err := NamespaceOf(tc.spec)
			if tc.refused {
				if !errors.Is(err, ErrHostNetwork) || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "host's network") {
					t.Fatalf("want a host-network refusal, got %v", err)
				}
				return
			}
			if err != nil || path != tc.path {
				t.Fatalf("got %q, %v; want %q", path, err, tc.path)
			}
		})
	}
}

// testNS is a named network namespace the test made (/run/netns/<name>).
type testNS struct {
	name string
	h    *netlink.Handle
	ns   netns.NsHandle
}

func (n *testNS) path() string { return "/run/netns/" + n.name }

func newTestNS(t testing.TB, name string) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	name = fmt.Sprintf("runvtest-%s-%d", name, os.Getpid())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		panic(serr) // this thread must not run anything else in the wrong namespace
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("new netns %s: %v", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNS{name: name, h: h, ns: ns}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
		netns.DeleteNamed(name)
	})
	lo, _ := h.LinkByName("lo")
	h.LinkSetUp(lo)
	return n
}

// inNS runs fn on a thread in ns.
func inNS(t testing.TB, ns netns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// Never unlocked: the thread ends with the goroutine, namespace and all.
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// fakeQEMU makes taps in a namespace of their own as runv makes QEMU's (persistent:
// hypervisor/qemu nicTaps), held open as QEMU holds them: they stay when the descriptors
// are closed, and go with their namespace, or with the mirroring's teardown once moved.
func fakeQEMU(t *testing.T, n int) []hypervisor.NIC {
	q := newTestNS(t, "qemu")
	var nics []hypervisor.NIC
	inNS(t, q.ns, func() {
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("tap%d_runv", i)
			tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
				Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE, Queues: 1}
			if err := netlink.LinkAdd(tap); err != nil {
				t.Errorf("tap %s: %v", name, err)
				return
			}
			for _, f := range tap.Fds {
				t.Cleanup(func() { f.Close() })
			}
			nics = append(nics, hypervisor.NIC{Slot: i, Tap: name, NetNS: q.path()})
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	return nics
}

// podWithVeth is the judged set-up: a veth whose peer is in another namespace, IPv4 and
// IPv6, MTU 1400, a default route and a permanent neighbour.
func podWithVeth(t *testing.T) (pod, peer *testNS) {
	pod, peer = newTestNS(t, "pod"), newTestNS(t, "peer")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(pod.h.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1400},
		PeerName:  "peer0", PeerNamespace: netlink.NsFd(peer.ns),
	}))
	eth0, err := pod.h.LinkByName("eth0")
	must(err)
	for _, a := range []string{"10.231.0.2/24", "fd31::2/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = unix.IFA_F_NODAD
		must(pod.h.AddrAdd(eth0, addr))
	}
	must(pod.h.LinkSetUp(eth0))
	must(pod.h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.231.0.1")}))
	mac, _ := net.ParseMAC("02:31:00:00:00:01")
	must(pod.h.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: net.ParseIP("10.231.0.9"), HardwareAddr: mac, State: netlink.NUD_PERMANENT}))
	return pod, peer
}

// dump is what a user would compare before and after: interfaces, addresses, routes,
// neighbours, qdiscs and filters, as text.
func dump(t *testing.T, n *testNS) string {
	t.Helper()
	var b strings.Builder
	links, err := n.h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		a := l.Attrs()
		fmt.Fprintf(&b, "link %d %s %s mtu %d qlen %d flags %v\n", a.Index, a.Name, a.HardwareAddr, a.MTU, a.TxQLen, a.Flags)
		addrs, _ := n.h.AddrList(l, netlink.FAMILY_ALL)
		for _, ad := range addrs {
			fmt.Fprintf(&b, "  addr %s\n", ad.IPNet)
		}
		qs, _ := n.h.QdiscList(l)
		for _, q := range qs {
			if q.Type() == "ingress" {
				fmt.Fprintf(&b, "  qdisc %s\n", q.Type())
			}
		}
		fs, _ := n.h.FilterList(l, ingressHandle)
		for _, f := range fs {
			fmt.Fprintf(&b, "  filter %s prio %d\n", f.Type(), f.Attrs().Priority)
		}
		neighs, _ := n.h.NeighList(a.Index, netlink.FAMILY_ALL)
		for _, nb := range neighs {
			if nb.State&netlink.NUD_PERMANENT != 0 {
				fmt.Fprintf(&b, "  neigh %s %s\n", nb.IP, nb.HardwareAddr)
			}
		}
	}
	routes, _ := n.h.RouteList(nil, netlink.FAMILY_ALL)
	var rs []string
	for _, r := range routes {
		rs = append(rs, "route "+r.String())
	}
	slices.Sort(rs)
	b.WriteString(strings.Join(rs, "\n"))
	return b.String()
}

func TestAttachMirrorsAndCloseRestores(t *testing.T) {
	pod, _ := podWithVeth(t)
	nics := fakeQEMU(t, 2)
	before := dump(t, pod)
	dir := filepath.Join(t.TempDir(), "network")

	p, n, err := Attach(context.Background(), dir, pod.path(), nics, nil)
	if err != nil {
		t.Fatal(err)
	}
	eth0, _ := pod.h.LinkByName("eth0")
	want := agentproto.Network{
		Interfaces: []agentproto.Interface{{Slot: 0, Name: "eth0", MAC: eth0.Attrs().HardwareAddr.String(), MTU: 1400, Addresses: []string{"10.231.0.2/24", "fd31::2/64"}}},
		Routes:     []agentproto.Route{{Family: 4, Gateway: "10.231.0.1", Device: "eth0"}},
		Neighbours: []agentproto.Neighbour{{IP: "10.231.0.9", MAC: "02:31:00:00:00:01", Device: "eth0"}},
	}
	if got, wantS := fmt.Sprintf("%+v", n), fmt.Sprintf("%+v", want); got != wantS {
		t.Errorf("network:\n got %s\nwant %s", got, wantS)
	}
	tap, err := pod.h.LinkByName("tap0_runv")
	if err != nil {
		t.Fatalf("tap not moved into the pod's namespace: %v", err)
	}
	if tap.Attrs().MTU != 1400 || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap: mtu %d flags %v, want 1400 and up", tap.Attrs().MTU, tap.Attrs().Flags)
	}
	for _, l := range []netlink.Link{eth0, tap} {
		fs, err := pod.h.FilterList(l, ingressHandle)
		if err != nil || len(fs) != 1 {
			t.Fatalf("%s: want one redirect filter, got %v, %v", l.Attrs().Name, fs, err)
		}
		acts := fs[0].(*netlink.U32).Actions
		if len(acts) != 1 || acts[0].(*netlink.MirredAction).MirredAction != netlink.TCA_EGRESS_REDIR {
			t.Errorf("%s: filter actions %+v, want one mirred egress redirect", l.Attrs().Name, acts)
		}
	}
	if addrs, _ := pod.h.AddrList(eth0, netlink.FAMILY_V4); len(addrs) != 1 {
		t.Errorf("eth0 must keep its address on the host, has %v", addrs)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if after := dump(t, pod); after != before {
		t.Errorf("namespace changed by attach+close:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory left: %v", err)
	}
}

func TestReleaseAfterCrash(t *testing.T) {
	pod, _ := podWithVeth(t)
	nics := fakeQEMU(t, 2)
	before := dump(t, pod)
	dir := filepath.Join(t.TempDir(), "network")
	p, _, err := Attach(context.Background(), dir, pod.path(), nics, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The attaching process dies: its handles go, the record and the mount stay.
	p.h.Close()
	p.ns.Close()
	if err := Release(dir); err != nil {
		t.Fatal(err)
	}
	if after := dump(t, pod); after != before {
		t.Errorf("namespace not restored by Release:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := Release(dir); err != nil {
		t.Errorf("second Release: %v", err)
	}
}

func TestSyncFollowsInterfaces(t *testing.T) {
	pod, peer := podWithVeth(t)
	nics := fakeQEMU(t, 2)
	p, n := attachThenAddEth1(t, pod, peer, nics, nil)
	if len(n.Interfaces) != 2 || n.Interfaces[1].Name != "eth1" || n.Interfaces[1].Slot != 1 {
		t.Fatalf("after adding eth1: %+v", n.Interfaces)
	}
	// A third interface finds no free NIC: refused, naming it.
	addVeth(t, pod, peer, "eth2", "peer2")
	if _, err := p.Sync(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "eth2") {
		t.Errorf("third interface: want a refusal naming eth2, got %v", err)
	}
	n = removeAndSync(t, p, pod, "eth2", "eth1")
	if len(n.Interfaces) != 1 || n.Interfaces[0].Name != "eth0" {
		t.Fatalf("after removing eth1: %+v", n.Interfaces)
	}
	if _, err := pod.h.LinkByName("tap1_runv"); err == nil {
		t.Error("eth1's tap is still in the pod's namespace")
	}
	// Its NIC is free again and goes back to its home namespace.
	q, _ := netns.GetFromPath(nics[1].NetNS)
	defer q.Close()
	qh, _ := netlink.NewHandleAt(q)
	defer qh.Close()
	if _, err := qh.LinkByName("tap1_runv"); err != nil {
		t.Errorf("tap1_runv did not go home: %v", err)
	}
}

func TestAttachLoopbackOnly(t *testing.T) {
	pod := newTestNS(t, "lo")
	p, n, err := Attach(context.Background(), filepath.Join(t.TempDir(), "network"), pod.path(), fakeQEMU(t, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if len(n.Interfaces) != 0 || len(n.Routes) != 0 {
		t.Errorf("loopback-only namespace gave %+v", n)
	}
}

func TestAttachRefusesNonNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: bind mounts")
	}
	f := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(f, nil, 0o600)
	dir := filepath.Join(t.TempDir(), "network")
	_, _, err := Attach(context.Background(), dir, f, nil, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), f) {
		t.Fatalf("want an invalid-argument error naming %s, got %v", f, err)
	}
	if _, err := os.Stat(filepath.Join(dir, nsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point left: %v", err)
	}
}

// fakePlugger stands in for QEMU's NIC hot-plug: it makes the plugged NIC's tap in home,
// as QEMU makes it in its own namespace, and deletes it when unplugged.
type fakePlugger struct {
	t         *testing.T
	home      *testNS
	next      int
	fail      error
	plugged   []int
	unplugged []int
}

func (f *fakePlugger) PlugNIC(ctx context.Context) (hypervisor.NIC, error) {
	if f.fail != nil {
		return hypervisor.NIC{}, f.fail
	}
	slot := f.next
	f.next++
	name := fmt.Sprintf("tap%d_runv", slot)
	var err error
	inNS(f.t, f.home.ns, func() {
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE, Queues: 1}
		if err = netlink.LinkAdd(tap); err == nil {
			for _, fd := range tap.Fds {
				f.t.Cleanup(func() { fd.Close() })
			}
		}
	})
	f.plugged = append(f.plugged, slot)
	return hypervisor.NIC{Slot: slot, Tap: name, NetNS: f.home.path()}, err
}

func (f *fakePlugger) UnplugNIC(ctx context.Context, nic hypervisor.NIC) error {
	f.unplugged = append(f.unplugged, nic.Slot)
	l, err := f.home.h.LinkByName(nic.Tap)
	if err != nil {
		return fmt.Errorf("tap %s is not back home: %w", nic.Tap, err)
	}
	return f.home.h.LinkDel(l)
}

// An interface beyond the VM's NICs gets a plugged one, unplugged when the interface
// leaves; a plug that fails refuses the interface, naming it and why.
func TestSyncPlugsNICs(t *testing.T) {
	pod, peer := podWithVeth(t)
	nics := fakeQEMU(t, 1)
	plugger := &fakePlugger{t: t, home: newTestNS(t, "qemuhome"), next: 1}
	p, n := attachThenAddEth1(t, pod, peer, nics, plugger)
	if len(n.Interfaces) != 2 || n.Interfaces[1].Name != "eth1" || n.Interfaces[1].Slot != 1 || !slices.Equal(plugger.plugged, []int{1}) {
		t.Fatalf("after adding eth1: %+v, plugged %v", n.Interfaces, plugger.plugged)
	}
	if _, err := pod.h.LinkByName("tap1_runv"); err != nil {
		t.Errorf("the plugged NIC's tap is not in the pod's namespace: %v", err)
	}

	plugger.fail = fmt.Errorf("no room: %w", errdefs.ErrFailedPrecondition)
	addVeth(t, pod, peer, "eth2", "peer2")
	if _, err := p.Sync(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "eth2") || !strings.Contains(err.Error(), "no room") {
		t.Errorf("a failed plug: want a refusal naming eth2 and the cause, got %v", err)
	}
	n = removeAndSync(t, p, pod, "eth2", "eth1")
	if len(n.Interfaces) != 1 || !slices.Equal(plugger.unplugged, []int{1}) {
		t.Errorf("after removing eth1: %+v, unplugged %v", n.Interfaces, plugger.unplugged)
	}
}

// addVeth adds a veth named name to pod, its peer (peerName) in peer.
func addVeth(t *testing.T, pod, peer *testNS, name, peerName string) {
	t.Helper()
	if err := pod.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peerName, PeerNamespace: netlink.NsFd(peer.ns)}); err != nil {
		t.Fatal(err)
	}
}

// removeAndSync deletes the named interfaces of pod and syncs p.
func removeAndSync(t *testing.T, p *Pod, pod *testNS, names ...string) agentproto.Network {
	t.Helper()
	for _, name := range names {
		l, err := pod.h.LinkByName(name)
		if err == nil {
			err = pod.h.LinkDel(l)
		}
		if err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	}
	n, err := p.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// attachThenAddEth1 attaches pod, adds an interface eth1 and syncs.
func attachThenAddEth1(t *testing.T, pod, peer *testNS, nics []hypervisor.NIC, plugger NICPlugger) (*Pod, agentproto.Network) {
	t.Helper()
	p, _, err := Attach(context.Background(), filepath.Join(t.TempDir(), "network"), pod.path(), nics, plugger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	addVeth(t, pod, peer, "eth1", "peer1")
	n, err := p.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p, n
}
