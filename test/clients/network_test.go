//go:build integration

package clients

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/runv-project/runv/test/nettest"
)

// Pods on the network, as the clients set it up: docker's bridge (-p, the host through the
// bridge, network connect, container:X). Traffic goes only to addresses on bridges and
// networks the suite makes.

// hostBridge is a Linux bridge in the host's namespace that the suite made, with an IPv4
// address: a client's network the host can reach.
type hostBridge struct {
	name string
	ip   net.IP
}

// bridgeSubnet is the suite's i-th /24: 10.232-235.<pid-derived>.0/24.
func bridgeSubnet(i int) string {
	return fmt.Sprintf("10.%d.%d.1/24", 232+i, os.Getpid()%250+1)
}

func newHostBridge(name, cidr string) (*hostBridge, error) {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return nil, err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	b := &hostBridge{name: name, ip: addr.IP}
	if err := netlink.AddrAdd(br, addr); err != nil {
		b.remove()
		return nil, fmt.Errorf("bridge %s: address %s: %w", name, cidr, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		b.remove()
		return nil, fmt.Errorf("bridge %s: up: %w", name, err)
	}
	return b, nil
}

func (b *hostBridge) remove() {
	if l, err := netlink.LinkByName(b.name); err == nil {
		netlink.LinkDel(l)
	}
}

// freePort is a TCP port nobody listens on right now on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// httpd is the command that serves the container's root on port 80.
var httpd = []string{"httpd", "-f", "-p", "80", "-h", "/"}

// checkServes fetches /etc/passwd from url and checks it is the image's.
func checkServes(x *tc, r result, url string) {
	x.t.Helper()
	body, err := nettest.Get(url, 60*time.Second)
	if err != nil || !strings.HasPrefix(body, "root:x:0:0:") {
		x.errorf(r, "the container's httpd does not answer at %s: %v %q", url, err, body)
	}
}

// TestDockerPublishedPort: docker run -p HOSTPORT:80 with a busybox httpd answers at the
// host's port (docker-proxy) and at the container's own address on docker's bridge; inside,
// eth0 has that address.
func TestDockerPublishedPort(t *testing.T) {
	d, x, name := newDockerTest(t)
	port := freePort(t)
	r := x.must(d.docker(t, cmdOpts{}, append([]string{"run", "-d", "--runtime", "runv", "--name", name, "-p", fmt.Sprintf("127.0.0.1:%d:80", port), img.Name}, httpd...)...))
	ip := strings.TrimSpace(x.must(d.docker(t, cmdOpts{}, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)).stdout)
	if net.ParseIP(ip) == nil {
		x.fatal(r, "docker inspect gives no IP address for the container: %q", ip)
	}
	checkServes(x, r, fmt.Sprintf("http://127.0.0.1:%d/etc/passwd", port))
	checkServes(x, r, "http://"+ip+"/etc/passwd")
	a := x.must(d.docker(t, cmdOpts{}, "exec", name, "ip", "-o", "addr", "show", "eth0"))
	if !strings.Contains(a.stdout, " "+ip+"/") {
		x.errorf(a, "eth0 in the container lacks docker's address %s", ip)
	}
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}

// TestDockerReachesHost: a container reaches a server on the host at the bridge's address.
func TestDockerReachesHost(t *testing.T) {
	d, x, name := newDockerTest(t)
	l, err := net.Listen("tcp", d.bridge.ip.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello-from-the-host\n") })}
	go srv.Serve(l)
	defer srv.Close()
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name, img.Name,
		"timeout", "30", "wget", "-q", "-O-", "http://"+l.Addr().String()+"/"))
	if !strings.Contains(r.stdout, "hello-from-the-host") {
		x.errorf(r, "the container did not reach the host's server at %s", l.Addr())
	}
}

// TestDockerNetworkConnect: docker network connect adds an interface to the running
// container (the pod's second NIC), reachable from the host; disconnect takes it away.
func TestDockerNetworkConnect(t *testing.T) {
	d, x, name := newDockerTest(t)
	netName := name + "-net"
	subnet := strings.Replace(bridgeSubnet(1), ".1/24", ".0/24", 1)
	x.must(d.docker(t, cmdOpts{}, "network", "create", "--subnet", subnet, "-o", "com.docker.network.bridge.name=rvcn"+fmt.Sprint(os.Getpid()%10000), netName))
	t.Cleanup(func() { d.quiet(time.Minute, "network", "rm", netName) })
	r := x.must(d.docker(t, cmdOpts{}, append([]string{"run", "-d", "--runtime", "runv", "--name", name, img.Name}, httpd...)...))
	x.must(d.docker(t, cmdOpts{}, "network", "connect", netName, name))
	ip := strings.TrimSpace(x.must(d.docker(t, cmdOpts{}, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+netName+"\").IPAddress}}", name)).stdout)
	if net.ParseIP(ip) == nil {
		x.fatal(r, "docker inspect gives no address on %s: %q", netName, ip)
	}
	// The guest follows the namespace a moment after docker changed it.
	if !waitFor(60*time.Second, func() bool {
		out, _ := d.quiet(20*time.Second, "exec", name, "ip", "-o", "addr")
		return strings.Contains(out, " "+ip+"/")
	}) {
		out, _ := d.quiet(20*time.Second, "exec", name, "ip", "addr")
		x.fatal(r, "after docker network connect, the container has no %s:\n%s", ip, out)
	}
	checkServes(x, r, "http://"+ip+"/etc/passwd")
	x.must(d.docker(t, cmdOpts{}, "network", "disconnect", netName, name))
	if !waitFor(60*time.Second, func() bool {
		out, err := d.quiet(20*time.Second, "exec", name, "ip", "-o", "addr")
		return err == nil && !strings.Contains(out, " "+ip+"/")
	}) {
		x.errorf(r, "after docker network disconnect, the container still has %s", ip)
	}
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}

// TestDockerSharedNetworkLocalhost: a container in another's network (--network
// container:A) is in A's pod and reaches A's server over localhost.
func TestDockerSharedNetworkLocalhost(t *testing.T) {
	d, x, name := newDockerTest(t)
	x.must(d.docker(t, cmdOpts{}, append([]string{"run", "-d", "--runtime", "runv", "--name", name, img.Name}, httpd...)...))
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--network", "container:"+name, img.Name,
		"sh", "-c", "for i in $(seq 50); do timeout 5 wget -q -O- http://127.0.0.1/etc/passwd && exit 0; sleep 0.2; done; exit 1"))
	if !strings.HasPrefix(r.stdout, "root:x:0:0:") {
		x.errorf(r, "the second container did not reach the first's httpd over localhost")
	}
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}
