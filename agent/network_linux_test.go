package agent

import (
	"strings"
	"testing"

	"github.com/runv-project/runv/api/agentproto"
)

func TestValidateNetwork(t *testing.T) {
	eth0 := agentproto.Interface{Slot: 0, Name: "eth0", MAC: "02:42:ac:11:00:02", MTU: 1400, Addresses: []string{"172.17.0.2/16", "fd00::2/64"}}
	ok := agentproto.Network{
		Interfaces: []agentproto.Interface{eth0},
		Routes:     []agentproto.Route{{Family: 4, Gateway: "172.17.0.1", Device: "eth0"}, {Family: 6, Destination: "fd01::/64", Device: "eth0"}},
		Neighbours: []agentproto.Neighbour{{IP: "172.17.0.9", MAC: "02:00:00:00:00:09", Device: "eth0"}},
	}
	with := func(edit func(*agentproto.Network)) agentproto.Network {
		n := ok
		n.Interfaces = append([]agentproto.Interface(nil), ok.Interfaces...)
		n.Routes = append([]agentproto.Route(nil), ok.Routes...)
		n.Neighbours = append([]agentproto.Neighbour(nil), ok.Neighbours...)
		edit(&n)
		return n
	}
	for _, tc := range []struct {
		name string
		n    agentproto.Network
		want string // "" = valid
	}{
		{"valid", ok, ""},
		{"empty: loopback only", agentproto.Network{}, ""},
		{"slot out of range", with(func(n *agentproto.Network) { n.Interfaces[0].Slot = agentproto.MaxNICs }), "slot"},
		{"slot twice", with(func(n *agentproto.Network) {
			e := eth0
			e.Name = "eth1"
			n.Interfaces = append(n.Interfaces, e)
		}), "slot 0"},
		{"name with a slash", with(func(n *agentproto.Network) { n.Interfaces[0].Name = "../x" }), "interface name"},
		{"name too long", with(func(n *agentproto.Network) { n.Interfaces[0].Name = "a-very-long-name0" }), "interface name"},
		{"loopback's name", with(func(n *agentproto.Network) { n.Interfaces[0].Name = "lo" }), "interface name"},
		{"bad MAC", with(func(n *agentproto.Network) { n.Interfaces[0].MAC = "nope" }), "MAC"},
		{"MTU too small", with(func(n *agentproto.Network) { n.Interfaces[0].MTU = 20 }), "MTU"},
		{"bad address", with(func(n *agentproto.Network) { n.Interfaces[0].Addresses = []string{"10.0.0.300/24"} }), "address"},
		{"route through an unknown device", with(func(n *agentproto.Network) { n.Routes[0].Device = "eth9" }), "eth9"},
		{"route without a family", with(func(n *agentproto.Network) { n.Routes[0].Family = 0 }), "family"},
		{"route with a bad gateway", with(func(n *agentproto.Network) { n.Routes[0].Gateway = "gw" }), "not an IP"},
		{"neighbour with a bad MAC", with(func(n *agentproto.Network) { n.Neighbours[0].MAC = "x" }), "MAC"},
		{"too many interfaces", agentproto.Network{Interfaces: make([]agentproto.Interface, agentproto.MaxNICs+1)}, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateNetwork(tc.n)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
		})
	}
}
