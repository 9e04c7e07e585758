package supervisor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/runv-project/runv/api/agentproto"
	"github.com/runv-project/runv/hypervisor"
)

// newNamedNS makes a network namespace for the test (/run/netns/<name>), gone at its end,
// and runs fn in it.
func newNamedNS(t *testing.T, name string, fn func()) string {
	t.Helper()
	name = fmt.Sprintf("runvsup-%s-%d", name, os.Getpid())
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, in the new namespace.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
			fn()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("new network namespace %s: %v", name, err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return filepath.Join("/run/netns", name)
}

// nicVM is an idle VM whose NICs are persistent taps in a namespace of their own, as
// runv makes QEMU's.
type nicVM struct {
	idleVM
	nics []hypervisor.NIC
}

func (v *nicVM) NICs() []hypervisor.NIC { return v.nics }

// A namespace with loopback only is not sent to the guest, which has that network already
// (SETUPNETWORK without interfaces cost a pooled pod's start 20 ms of guest time); an
// interface that comes later is.
func TestConnectNetworkSendsOnlyInterfaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and taps")
	}
	vm := &nicVM{idleVM: idleVM{done: make(chan struct{})}}
	qemuNS := newNamedNS(t, "qemu", func() {
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0_runv"}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE}
		if err := netlink.LinkAdd(tap); err != nil {
			t.Errorf("tap: %v", err)
		}
	})
	vm.nics = []hypervisor.NIC{{Slot: 0, Tap: "tap0_runv", NetNS: qemuNS}}
	podNS := newNamedNS(t, "pod", func() {})
	peerNS := newNamedNS(t, "peer", func() {})

	a := newFakeAgent()
	s, err := New(context.Background(), Config{
		PodID: "p", Dir: t.TempDir(), Factory: vmFactory{vm},
		connect: func(context.Context, hypervisor.VM, string, func(string)) (guestAgent, error) { return a, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if err := s.ConnectNetwork(context.Background(), podNS); err != nil {
		t.Fatal(err)
	}
	if n := a.sent(agentproto.MsgSetupNetwork); n != 0 {
		t.Errorf("loopback-only namespace: SETUPNETWORK sent %d times, want none", n)
	}

	// An interface arrives: a veth whose other end is in another namespace.
	pod, err := netns.GetFromPath(podNS)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	peer, err := netns.GetFromPath(peerNS)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	h, err := netlink.NewHandleAt(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0", PeerNamespace: netlink.NsFd(peer)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); a.sent(agentproto.MsgSetupNetwork) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("an interface added to the namespace was not sent to the guest within 30 s")
		}
		time.Sleep(20 * time.Millisecond) // a poll with a deadline: the daemon settles changes for 200 ms
	}
}
