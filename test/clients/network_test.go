//go:build integration

package clients

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	if b == nil {
		return
	}
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

const helloFromHost = "hello-from-the-host"

// hostServer serves helloFromHost over HTTP at ip (a bridge's address on the host) until the
// test ends, and returns its address.
func hostServer(t *testing.T, ip net.IP) string {
	t.Helper()
	l, err := net.Listen("tcp", ip.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, helloFromHost+"\n") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
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
	// /etc/hosts, /etc/resolv.conf and /etc/hostname are the files docker wrote and mounted.
	for _, f := range []struct{ inspect, path string }{
		{"{{.HostsPath}}", "/etc/hosts"}, {"{{.ResolvConfPath}}", "/etc/resolv.conf"}, {"{{.HostnamePath}}", "/etc/hostname"},
	} {
		hostPath := strings.TrimSpace(x.must(d.docker(t, cmdOpts{}, "inspect", "-f", f.inspect, name)).stdout)
		in := x.must(d.docker(t, cmdOpts{}, "exec", name, "cat", f.path))
		if want := readAll(hostPath); in.stdout != want {
			x.errorf(in, "%s in the container is not docker's %s (%q)", f.path, hostPath, want)
		}
	}
	x.must(d.docker(t, cmdOpts{}, "rm", "-f", name))
}

// TestDockerReachesHost: a container reaches a server on the host at the bridge's address.
func TestDockerReachesHost(t *testing.T) {
	d, x, name := newDockerTest(t)
	addr := hostServer(t, d.bridge.ip)
	r := x.must(d.docker(t, cmdOpts{}, "run", "--rm", "--runtime", "runv", "--name", name, img.Name,
		"timeout", "30", "wget", "-q", "-O-", "http://"+addr+"/"))
	if !strings.Contains(r.stdout, helloFromHost) {
		x.errorf(r, "the container did not reach the host's server at %s", addr)
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

// podmanNet is the suite's default network for podman: a CNI bridge network of its own.
type podmanNet struct {
	conf   string // containers.conf's [network] section
	bridge *hostBridge
}

// podmanNetwork writes a CNI network (bridge plugin, host-local addresses on the suite's
// third /24; portmap for -p, as podman's own default network has) into dir and returns the
// containers.conf section that makes it podman's default.
func podmanNetwork(dir string) (podmanNet, error) {
	gw := strings.TrimSuffix(bridgeSubnet(2), "/24")
	subnet := strings.TrimSuffix(gw, ".1") + ".0/24"
	name := "rvcpod"
	br := &hostBridge{name: fmt.Sprintf("rvcp%d", os.Getpid()%10000), ip: net.ParseIP(gw)}
	conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": %q,
  "plugins": [{"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
    "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": %q, "gateway": %q}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}]
}
`, name, br.name, subnet, gw)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return podmanNet{}, err
	}
	if err := os.WriteFile(dir+"/"+name+".conflist", []byte(conflist), 0o644); err != nil {
		return podmanNet{}, err
	}
	conf := fmt.Sprintf("[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/usr/lib/cni\"]\nnetwork_config_dir = %q\ndefault_network = %q\n", dir, name)
	return podmanNet{conf: conf, bridge: br}, nil
}

// TestPodmanDefaultNetwork: with podman's default network (a CNI bridge), the container's
// httpd answers at its address, and the container reaches the host at the bridge's.
func TestPodmanDefaultNetwork(t *testing.T) {
	p, x, name := newPodmanTest(t)
	r := x.must(p.podman(t, cmdOpts{}, append([]string{"run", "-d", "--name", name, img.Name}, httpd...)...))
	ip := strings.TrimSpace(x.must(p.podman(t, cmdOpts{}, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)).stdout)
	if net.ParseIP(ip) == nil {
		x.fatal(r, "podman inspect gives no IP address for the container: %q", ip)
	}
	checkServes(x, r, "http://"+ip+"/etc/passwd")
	a := x.must(p.podman(t, cmdOpts{}, "exec", name, "ip", "-o", "addr", "show", "eth0"))
	if !strings.Contains(a.stdout, " "+ip+"/") {
		x.errorf(a, "eth0 in the container lacks podman's address %s", ip)
	}
	addr := hostServer(t, p.bridge.ip)
	w := x.must(p.podman(t, cmdOpts{}, "exec", name, "timeout", "30", "wget", "-q", "-O-", "http://"+addr+"/"))
	if !strings.Contains(w.stdout, helloFromHost) {
		x.errorf(w, "the container did not reach the host's server at %s", addr)
	}
	x.must(p.podman(t, cmdOpts{}, "rm", "-f", "-t", "0", name))
}

// TestPodmanPublishedPort: podman run -p HOSTPORT:80 with a busybox httpd answers at the
// host's port (CNI's portmap: a DNAT to the container's address, which the pod's VM holds).
func TestPodmanPublishedPort(t *testing.T) {
	p, x, name := newPodmanTest(t)
	port := freePort(t)
	r := x.must(p.podman(t, cmdOpts{}, append([]string{"run", "-d", "--name", name, "-p", fmt.Sprintf("%d:80", port), img.Name}, httpd...)...))
	// The host's own address on the network: portmap's DNAT applies to connections the host
	// makes to its local addresses (127.0.0.1 would need route_localnet).
	checkServes(x, r, fmt.Sprintf("http://%s:%d/etc/passwd", p.bridge.ip, port))
	x.must(p.podman(t, cmdOpts{}, "rm", "-f", "-t", "0", name))
}

// cniNet is a CNI network as containerd's CRI plugin sets one up for a pod: the test runs
// the plugins (Debian's containernetworking-plugins: bridge with host-local addresses, then
// portmap for a hostPort) on a network namespace it made, and the container names that
// namespace by path.
type cniNet struct {
	ns       string // /run/netns/<ns>
	id       string
	conf     []map[string]any
	bridge   *hostBridge
	hostPort int
	podIP    string
}

const cniPluginDir = "/usr/lib/cni"

// newCNINet makes the namespace and runs ADD; DEL, the namespace and the bridge go when the
// test ends.
func newCNINet(t *testing.T, hostPort int) *cniNet {
	t.Helper()
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(cniPluginDir + "/" + p); err != nil {
			t.Skipf("CNI plugin %s is not installed (make client-deps: apt-get install containernetworking-plugins): %v", p, err)
		}
	}
	gw := strings.TrimSuffix(bridgeSubnet(3), "/24")
	n := &cniNet{
		ns: fmt.Sprintf("rvcni-%d", os.Getpid()), id: fmt.Sprintf("rvcni%d", os.Getpid()), hostPort: hostPort,
		bridge: &hostBridge{name: fmt.Sprintf("rvcc%d", os.Getpid()%10000), ip: net.ParseIP(gw)},
	}
	n.conf = []map[string]any{
		{"type": "bridge", "bridge": n.bridge.name, "isGateway": true, "ipMasq": false, "ipam": map[string]any{
			"type": "host-local", "dataDir": filepath.Join(tmp, "cni-ipam"), "routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
			"ranges": []any{[]any{map[string]any{"subnet": strings.TrimSuffix(gw, ".1") + ".0/24", "gateway": gw}}}}},
		{"type": "portmap", "capabilities": map[string]bool{"portMappings": true},
			"runtimeConfig": map[string]any{"portMappings": []any{map[string]any{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}}}},
	}
	if out, err := exec.Command("ip", "netns", "add", n.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.ns, err, out)
	}
	t.Cleanup(func() {
		if err := n.run("DEL"); err != nil {
			t.Errorf("CNI DEL: %v", err)
		}
		exec.Command("ip", "netns", "del", n.ns).Run()
		n.bridge.remove()
	})
	if err := n.run("ADD"); err != nil {
		t.Fatalf("CNI ADD: %v", err)
	}
	return n
}

// run runs the plugins for command (DEL in reverse order), as libcni does.
func (n *cniNet) run(command string) error {
	order := n.conf
	if command == "DEL" {
		order = []map[string]any{n.conf[1], n.conf[0]}
	}
	var prev json.RawMessage
	for _, p := range order {
		conf := map[string]any{"cniVersion": "0.4.0", "name": "rvcni"}
		for k, v := range p {
			conf[k] = v
		}
		if prev != nil {
			conf["prevResult"] = prev
		}
		in, _ := json.Marshal(conf)
		cmd := exec.Command(cniPluginDir + "/" + p["type"].(string))
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+n.id, "CNI_NETNS=/run/netns/"+n.ns,
			"CNI_IFNAME=eth0", "CNI_PATH="+cniPluginDir)
		cmd.Stdin = strings.NewReader(string(in))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s%s", p["type"], command, err, out, stderr.String())
		}
		if command == "ADD" {
			prev = out
			var res struct {
				IPs []struct {
					Address string `json:"address"`
				} `json:"ips"`
			}
			if json.Unmarshal(out, &res) == nil && len(res.IPs) > 0 {
				n.podIP = strings.Split(res.IPs[0].Address, "/")[0]
			}
		}
	}
	return nil
}

// TestContainerdCNI: containerd (ctr, runc shim with runv) runs a busybox httpd in a network
// namespace set up with CNI's bridge and portmap plugins, as containerd's CRI plugin does
// for a pod: it answers at the pod's address and at the hostPort on the host.
func TestContainerdCNI(t *testing.T) {
	c, x, id := newCtrTest(t)
	n := newCNINet(t, freePort(t))
	r := x.must(c.ctr(t, cmdOpts{}, append([]string{"run", "-d", "--runc-binary", runtimePath, "--with-ns", "network:/run/netns/" + n.ns, img.Qualified, id}, httpd...)...))
	checkServes(x, r, "http://"+n.podIP+"/etc/passwd")
	checkServes(x, r, fmt.Sprintf("http://%s:%d/etc/passwd", n.bridge.ip, n.hostPort))
	x.must(c.ctr(t, cmdOpts{}, "tasks", "kill", "-s", "KILL", id))
	waitFor(30*time.Second, func() bool {
		out, _ := c.ctrQuiet("tasks", "ls")
		return !strings.Contains(out, id+" ") || strings.Contains(out, "STOPPED")
	})
	x.must(c.ctr(t, cmdOpts{}, "tasks", "delete", id))
	x.must(c.ctr(t, cmdOpts{}, "containers", "rm", id))
}
