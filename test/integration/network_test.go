//go:build integration

package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/leakcheck"
	"github.com/runv-project/runv/test/nettest"
)

// Pods on the network: the pod's network namespace, configured as CNI would (a veth whose
// peer is in the host's namespace, IPv4 and IPv6, MTU 1400), named by path in the bundle;
// the VM mirrors it. Traffic goes only to addresses these tests assign.

// podNet is a network namespace made for one test: a veth eth0 in it, its peer in the
// host's namespace.
type podNet struct {
	name   string // /run/netns/<name>
	hostIf string
	hostV4 string // the peer's addresses: the pod's gateways
	hostV6 string
	podV4  string
	podV6  string
	podMAC string
	mtu    int
}

func (n podNet) path() string { return "/run/netns/" + n.name }

// netSeq numbers the namespaces of the suite (tests make them in parallel).
var netSeq atomic.Int32

// newPodNet makes the namespace; with veth false it holds loopback only. It is deleted
// (and the peer with it) when the test ends.
func newPodNet(t *testing.T, veth bool) podNet {
	t.Helper()
	seq := int(netSeq.Add(1))
	i := (os.Getpid()+seq)%250 + 1
	n := podNet{
		name: fmt.Sprintf("rvit-%d-%d", os.Getpid(), seq), hostIf: fmt.Sprintf("rvit%d", i),
		hostV4: fmt.Sprintf("10.231.%d.1", i), podV4: fmt.Sprintf("10.231.%d.2", i),
		hostV6: fmt.Sprintf("fd31:0:0:%x::1", i), podV6: fmt.Sprintf("fd31:0:0:%x::2", i), mtu: 1400,
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(n.name)
	if serr := netns.Set(orig); serr != nil {
		panic(serr)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("netns %s: %v", n.name, err)
	}
	t.Cleanup(func() { netns.DeleteNamed(n.name) })
	defer ns.Close()
	ph, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	lo, _ := ph.LinkByName("lo")
	must("lo up", ph.LinkSetUp(lo))
	if !veth {
		return n
	}
	hostAttrs := netlink.NewLinkAttrs() // the kernel's defaults, as CNI plugins get them
	hostAttrs.Name, hostAttrs.MTU = n.hostIf, n.mtu
	must("veth", netlink.LinkAdd(&netlink.Veth{
		LinkAttrs: hostAttrs,
		PeerName:  "eth0", PeerNamespace: netlink.NsFd(ns),
	}))
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(n.hostIf); err == nil {
			netlink.LinkDel(l)
		}
	})
	host, err := netlink.LinkByName(n.hostIf)
	must("host veth", err)
	eth0, err := ph.LinkByName("eth0")
	must("pod veth", err)
	n.podMAC = eth0.Attrs().HardwareAddr.String()
	addr := func(h *netlink.Handle, l netlink.Link, cidr string) {
		a, err := netlink.ParseAddr(cidr)
		must(cidr, err)
		a.Flags = unix.IFA_F_NODAD
		must("address "+cidr, h.AddrAdd(l, a))
	}
	hh, err := netlink.NewHandle()
	must("handle", err)
	defer hh.Close()
	addr(hh, host, n.hostV4+"/24")
	addr(hh, host, n.hostV6+"/64")
	addr(ph, eth0, n.podV4+"/24")
	addr(ph, eth0, n.podV6+"/64")
	must("pod veth MTU", ph.LinkSetMTU(eth0, n.mtu))
	must("host veth up", hh.LinkSetUp(host))
	must("pod veth up", ph.LinkSetUp(eth0))
	must("default route", ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(n.hostV4)}))
	must("default v6 route", ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(n.hostV6)}))
	// Snapshots compare address flags: wait until the link-local address is no longer
	// tentative (duplicate address detection done).
	waitUntil(t, "IPv6 DAD done in "+n.name, 30*time.Second, func() bool {
		addrs, err := ph.AddrList(eth0, netlink.FAMILY_V6)
		if err != nil {
			return false
		}
		linkLocal := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				return false
			}
			linkLocal = linkLocal || a.IP.IsLinkLocalUnicast()
		}
		return linkLocal
	})
	return n
}

// snapshot is what `ip` and `tc` show of the namespace, as a user would compare it, and
// the BPF links attached to it.
func (n podNet) snapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-n", n.name, "-d", "link"}, {"ip", "-n", n.name, "addr"}, {"ip", "-n", n.name, "route"},
		{"ip", "-n", n.name, "-6", "route"}, {"ip", "-n", n.name, "neigh", "show", "nud", "permanent"},
		{"tc", "-n", n.name, "qdisc"}, {"tc", "-n", n.name, "filter", "show", "dev", "eth0", "ingress"},
	} {
		// Standard output only: with namespaces coming and going around it (parallel tests),
		// `ip addr` may also print "Error: Peer netns reference is invalid." on stderr for a
		// veth whose peer's namespace id it cannot resolve at that moment: not the namespace's
		// state, and it made equal snapshots differ.
		var stderr strings.Builder
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil && !strings.Contains(stderr.String(), "Cannot find device") {
			t.Fatalf("%s: %v: %s%s", strings.Join(args, " "), err, out, stderr.String())
		}
		fmt.Fprintf(&b, "$ %s\n%s", strings.Join(args, " "), out)
	}
	// What `ip` and `tc` do not show: runv's port-forward steering (an sk_lookup link).
	fmt.Fprintf(&b, "BPF links attached to the namespace: %d\n", leakcheck.NetnsBPFLinks(t, n.path()))
	return b.String()
}

// httpBundle serves the container's root over HTTP on port 80 (busybox httpd) in the
// namespace at nsPath.
func httpBundle(t *testing.T, nsPath string) string {
	return newBundleWith(t, func(s *specs.Spec) { setNetNS(s, nsPath) }, "httpd", "-f", "-p", "80", "-h", "/")
}

func setNetNS(s *specs.Spec, path string) {
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = path
		}
	}
}

// httpGet fetches url, retrying until the deadline: the server starts with the container.
func httpGet(t *testing.T, url string, timeout time.Duration) string {
	t.Helper()
	body, err := nettest.Get(url, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// checkPodOnNetwork is the judged check: the pod answers HTTP at its addresses from the
// host, v4 and v6, and inside, `ip addr` and `ip route` show the namespace's identity.
func checkPodOnNetwork(t *testing.T, r, id string, n podNet) {
	t.Helper()
	for _, url := range []string{"http://" + n.podV4 + "/etc/passwd", "http://[" + n.podV6 + "]/etc/passwd"} {
		if got := httpGet(t, url, 60*time.Second); !strings.HasPrefix(got, "root:x:0:0:") {
			t.Errorf("GET %s: %q is not the pod's /etc/passwd", url, got)
		}
	}
	addr := mustRunv(t, r, "exec", id, "ip", "addr", "show", "eth0").stdout
	for _, w := range []string{"link/ether " + n.podMAC, "mtu 1400", "inet " + n.podV4 + "/24", "inet6 " + n.podV6 + "/64", "UP"} {
		if !strings.Contains(addr, w) {
			t.Errorf("ip addr show eth0 in the pod lacks %q:\n%s", w, addr)
		}
	}
	route := mustRunv(t, r, "exec", id, "ip", "route").stdout
	for _, w := range []string{"default via " + n.hostV4 + " dev eth0", n.podV4[:strings.LastIndex(n.podV4, ".")] + ".0/24 dev eth0"} {
		if !strings.Contains(route, w) {
			t.Errorf("ip route in the pod lacks %q:\n%s", w, route)
		}
	}
	route6 := mustRunv(t, r, "exec", id, "ip", "-6", "route").stdout
	if !strings.Contains(route6, "default via "+n.hostV6+" dev eth0") {
		t.Errorf("ip -6 route in the pod lacks the default route via %s:\n%s", n.hostV6, route6)
	}
}

// TestNetworkNamespaceByPath is the judged test, with each factory kind: direct boot (on
// microvm and on q35), a template clone, a pooled VM.
func TestNetworkNamespaceByPath(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, r string) []string // global flags
		check func(t *testing.T, podDir string)
	}{
		{name: "direct", setup: func(*testing.T, string) []string { return nil }},
		{name: "direct-q35", setup: func(*testing.T, string) []string { return []string{"--machine", "q35"} }},
		{
			name: "template",
			setup: func(t *testing.T, r string) []string {
				createTemplate(t, r)
				return []string{"--factory", "template"}
			},
			check: func(t *testing.T, podDir string) {
				if log, _ := os.ReadFile(filepath.Join(podDir, "daemon.log")); !strings.Contains(string(log), "vm cloned from template") {
					t.Errorf("the pod's VM is not a clone; daemon log:\n%s", log)
				}
			},
		},
		{
			name: "cache",
			setup: func(t *testing.T, r string) []string {
				startFactoryDaemon(t, r, "--factory", cachePolicy)
				t.Cleanup(func() { os.RemoveAll(filepath.Join(r, "@factory")) })
				return []string{"--factory", cachePolicy}
			},
			check: func(t *testing.T, podDir string) {
				if _, err := os.Stat(filepath.Join(podDir, "vm", "holder.sock")); err != nil {
					t.Errorf("the pod's VM is not a pooled one: %v", err)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := templateRootIf(t, tc.name == "template" || tc.name == "cache")
			global := tc.setup(t, r)
			n := newPodNet(t, true)
			before := n.snapshot(t)
			id := newID(t)
			mustRunv(t, r, append(global, "run", "-d", "--bundle", httpBundle(t, n.path()), id)...)
			if tc.check != nil {
				tc.check(t, podDirOf(t, r, id))
			}
			checkPodOnNetwork(t, r, id, n)
			// The root keeps the template or the factory daemon: their own cleanups check it.
			mustRunv(t, r, "delete", "--force", id)
			if after := n.snapshot(t); after != before {
				t.Errorf("the namespace changed across the pod's life:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// templateRootIf is templateRoot for template tests (their templates go at the end),
// shortRoot otherwise.
func templateRootIf(t *testing.T, template bool) string {
	if template {
		return templateRoot(t)
	}
	return shortRoot(t)
}

// A killed QEMU, or a killed pod daemon (and with it QEMU), leaves runv's qdisc and filter
// on the pod's interface; delete removes them and leaves the namespace as it was.
func TestNetworkCleanupAfterKill(t *testing.T) {
	for _, victim := range []string{"qemu", "pod daemon"} {
		t.Run(victim, func(t *testing.T) {
			r := shortRoot(t)
			n := newPodNet(t, true)
			before := n.snapshot(t)
			id := newID(t)
			mustRunv(t, r, "run", "-d", "--bundle", httpBundle(t, n.path()), id)
			httpGet(t, "http://"+n.podV4+"/etc/passwd", 60*time.Second)
			podDir := podDirOf(t, r, id)
			qemuPid := readPid(t, filepath.Join(podDir, "vm", "qemu.pid"))
			pid := qemuPid
			if victim == "pod daemon" {
				pid = podDaemonOf(t, podDir)
			}
			unix.Kill(pid, unix.SIGKILL)
			waitUntil(t, "QEMU gone", 15*time.Second, func() bool { return !alive(qemuPid) })
			waitStatus(t, r, id, "stopped")
			deleteAndCheck(t, r, id)
			if after := n.snapshot(t); after != before {
				t.Errorf("the namespace is not as before after delete:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// A namespace with loopback only gives a pod with loopback only.
func TestNetworkLoopbackOnly(t *testing.T) {
	r := shortRoot(t)
	n := newPodNet(t, false)
	id := newID(t)
	mustRunv(t, r, "run", "-d", "--bundle", newBundleWith(t, func(s *specs.Spec) { setNetNS(s, n.path()) }, "sleep", "1000"), id)
	defer deleteAndCheck(t, r, id)
	waitStatus(t, r, id, "running")
	addr := mustRunv(t, r, "exec", id, "ip", "-o", "addr").stdout
	for _, line := range strings.Split(strings.TrimSpace(addr), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] != "lo" {
			t.Errorf("an address on a non-loopback interface in a loopback-only pod: %s", line)
		}
	}
	links := mustRunv(t, r, "exec", id, "ip", "-o", "link", "show", "up").stdout
	for _, line := range strings.Split(strings.TrimSpace(links), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] != "lo:" {
			t.Errorf("an interface up besides lo: %s", line)
		}
	}
	if res := runvIn(t, r, nil, "exec", id, "sh", "-c", "httpd -p 127.0.0.1:8080 -h / && wget -q -O- http://127.0.0.1:8080/etc/passwd"); res.code != 0 {
		t.Errorf("loopback in the pod: %s", res)
	}
}

// A config without a network namespace means the host's network: refused, nothing left.
func TestNetworkHostRefused(t *testing.T) {
	r := shortRoot(t)
	b := newBundleWith(t, func(s *specs.Spec) {
		var keep []specs.LinuxNamespace
		for _, ns := range s.Linux.Namespaces {
			if ns.Type != specs.NetworkNamespace {
				keep = append(keep, ns)
			}
		}
		s.Linux.Namespaces = keep
	}, "true")
	res := runvIn(t, r, nil, "run", "--bundle", b, newID(t))
	if res.code == 0 || !strings.Contains(res.stderr, "host's network") {
		t.Fatalf("want a refusal that names the host's network, got %s", res)
	}
	assertEmptyRoot(t, r)
}

// More interfaces than the VM has NICs: the start is refused with an error naming the
// interface left over, and nothing of runv's stays in the namespace.
func TestNetworkTooManyInterfacesRefused(t *testing.T) {
	r := shortRoot(t)
	n := newPodNet(t, true)
	ns, err := netns.GetFromPath(n.path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for i := 1; i <= 2; i++ {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = fmt.Sprintf("rvx%d-%d", os.Getpid()%10000, i)
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: fmt.Sprintf("eth%d", i), PeerNamespace: netlink.NsFd(ns)}); err != nil {
			t.Fatal(err)
		}
		name := attrs.Name
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(name); err == nil {
				netlink.LinkDel(l)
			}
		})
	}
	before := n.snapshot(t)
	id := newID(t)
	res := runvIn(t, r, nil, "run", "-d", "--bundle", httpBundle(t, n.path()), id)
	if res.code == 0 || !strings.Contains(res.stderr, "eth2") || !strings.Contains(res.stderr, "network devices") {
		t.Fatalf("want a refusal naming eth2 and the VM's network devices, got %s", res)
	}
	runvIn(t, r, nil, "delete", "--force", id)
	assertEmptyRoot(t, r)
	if after := n.snapshot(t); after != before {
		t.Errorf("the refused start left something in the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// addInterface adds a veth named name to the pod's namespace, its peer in the host's
// namespace, with 10.232.<k>.2/24 on the pod's side and .1 on the host's, and returns the
// pod's address. The host side goes with the test (and the pod's side with it).
func addInterface(t *testing.T, n podNet, name string, k int) string {
	t.Helper()
	ns, err := netns.GetFromPath(n.path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ph, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = fmt.Sprintf("rvh%d-%d", os.Getpid()%10000, k)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name, PeerNamespace: netlink.NsFd(ns)}); err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	hostName := attrs.Name
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(hostName); err == nil {
			netlink.LinkDel(l)
		}
	})
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		t.Fatal(err)
	}
	pod, err := ph.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	subnet := fmt.Sprintf("10.232.%d", (os.Getpid()+k)%250+1)
	for _, s := range []struct {
		h    *netlink.Handle
		l    netlink.Link
		cidr string
	}{{nil, host, subnet + ".1/24"}, {ph, pod, subnet + ".2/24"}} {
		a, _ := netlink.ParseAddr(s.cidr)
		add, up := netlink.AddrAdd, netlink.LinkSetUp
		if s.h != nil {
			add, up = s.h.AddrAdd, s.h.LinkSetUp
		}
		if err := add(s.l, a); err != nil {
			t.Fatalf("address %s: %v", s.cidr, err)
		}
		if err := up(s.l); err != nil {
			t.Fatalf("%s up: %v", s.l.Attrs().Name, err)
		}
	}
	// Snapshots compare link states and address flags: wait until the link has its carrier
	// and its link-local address passed duplicate address detection.
	waitUntil(t, name+" up in "+n.name, 30*time.Second, func() bool {
		l, err := ph.LinkByName(name)
		if err != nil || l.Attrs().OperState != netlink.OperUp {
			return false
		}
		addrs, err := ph.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return false
		}
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				return false
			}
		}
		return len(addrs) > 0
	})
	return subnet + ".2"
}

// On q35 a third interface, beyond the two NICs every VM boots with, is hot-plugged into
// the running pod: it appears in the guest with its address and answers; when it leaves
// the namespace the NIC is unplugged and its tap is gone; another takes its place; after
// delete nothing of runv's is left and, the test's interface removed, the namespace is as
// before.
func TestNetworkHotplugQ35(t *testing.T) {
	for _, kind := range []string{"direct", "template"} {
		t.Run(kind, func(t *testing.T) {
			r := templateRootIf(t, kind == "template")
			global := []string{"--machine", "q35"}
			if kind == "template" {
				// The clone has the template's devices, its spare root ports among them.
				createTemplate(t, r, global...)
				global = append(global, "--factory", "template")
			}
			testHotplug(t, r, global)
		})
	}
}

func testHotplug(t *testing.T, r string, global []string) {
	n := newPodNet(t, true)
	addInterface(t, n, "eth1", 1)
	before := n.snapshot(t)
	id := newID(t)
	mustRunv(t, r, append(global, "run", "-d", "--bundle", httpBundle(t, n.path()), id)...)
	httpGet(t, "http://"+n.podV4+"/etc/passwd", 60*time.Second)
	qemuPid := readPid(t, filepath.Join(podDirOf(t, r, id), "vm", "qemu.pid"))

	third := addInterface(t, n, "eth2", 2)
	var addr string
	waitUntil(t, "eth2 with "+third+" in the guest", 120*time.Second, func() bool {
		addr = runvIn(t, r, nil, "exec", id, "ip", "addr", "show", "eth2").stdout
		return strings.Contains(addr, "inet "+third+"/24") && strings.Contains(addr, "UP")
	})
	if got := httpGet(t, "http://"+third+"/etc/passwd", 60*time.Second); !strings.HasPrefix(got, "root:x:0:0:") {
		t.Errorf("GET http://%s/etc/passwd: %q is not the pod's /etc/passwd", third, got)
	}

	// The interface leaves: deleting the host's end of the veth takes eth2 with it.
	if l, err := netlink.LinkByName(fmt.Sprintf("rvh%d-%d", os.Getpid()%10000, 2)); err != nil {
		t.Fatal(err)
	} else if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "eth2 gone from the guest", 120*time.Second, func() bool {
		links := runvIn(t, r, nil, "exec", id, "ip", "-o", "link").stdout
		return strings.Contains(links, "eth1") && !strings.Contains(links, "eth2") && !strings.Contains(links, "runvnic2")
	})
	waitUntil(t, "the plugged NIC's tap gone from QEMU's namespace", 120*time.Second, func() bool {
		inQEMU, err := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", qemuPid), "ip", "-o", "link").CombinedOutput()
		inPod, perr := exec.Command("ip", "-n", n.name, "-o", "link").CombinedOutput()
		return err == nil && perr == nil && !strings.Contains(string(inQEMU), "tap2_runv") && !strings.Contains(string(inPod), "tap2_runv")
	})
	// The other interfaces still answer.
	httpGet(t, "http://"+n.podV4+"/etc/passwd", 60*time.Second)
	// What following the plug and the unplug took (docs/networking.md quotes it).
	log, _ := os.ReadFile(filepath.Join(podDirOf(t, r, id), "daemon.log"))
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "network change followed") {
			t.Log(l)
		}
	}

	// Another third interface takes the freed root port; the pod is deleted with it still
	// there: nothing of runv's stays on it either.
	again := addInterface(t, n, "eth3", 3)
	waitUntil(t, "eth3 with "+again+" in the guest", 120*time.Second, func() bool {
		return strings.Contains(runvIn(t, r, nil, "exec", id, "ip", "addr", "show", "eth3").stdout, "inet "+again+"/24")
	})
	httpGet(t, "http://"+again+"/etc/passwd", 60*time.Second)
	mustRunv(t, r, "delete", "--force", id)
	if !slices.Contains(global, "template") {
		assertEmptyRoot(t, r) // a template root keeps its template: its cleanup checks it
	}
	for _, args := range [][]string{{"ip", "-n", n.name, "-o", "link"}, {"tc", "-n", n.name, "qdisc"}, {"tc", "-n", n.name, "filter", "show", "dev", "eth3", "ingress"}} {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "_runv") || strings.Contains(string(out), "ingress") || strings.Contains(string(out), "mirred") {
			t.Errorf("after delete, %s shows runv's taps, qdiscs or filters (%v):\n%s", strings.Join(args, " "), err, out)
		}
	}
	eth3, err := netlink.LinkByName(fmt.Sprintf("rvh%d-%d", os.Getpid()%10000, 3))
	if err != nil {
		t.Fatal(err)
	}
	netlink.LinkDel(eth3)
	waitUntil(t, "eth3 gone from the namespace", 30*time.Second, func() bool {
		return n.snapshot(t) == before
	})
}
