package network

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/runv-project/runv/api/agentproto"
)

func TestWireRoute(t *testing.T) {
	cidr := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	for _, tc := range []struct {
		name string
		r    netlink.Route
		want agentproto.Route
	}{
		// netlink reports a default route with a nil or an all-zero destination.
		{"default, nil destination", netlink.Route{Family: netlink.FAMILY_V4, Gw: net.ParseIP("10.0.0.1")},
			agentproto.Route{Family: 4, Gateway: "10.0.0.1", Device: "eth0"}},
		{"default, 0.0.0.0/0", netlink.Route{Family: netlink.FAMILY_V4, Dst: cidr("0.0.0.0/0"), Gw: net.ParseIP("10.0.0.1")},
			agentproto.Route{Family: 4, Gateway: "10.0.0.1", Device: "eth0"}},
		{"v6 default", netlink.Route{Family: netlink.FAMILY_V6, Dst: cidr("::/0"), Gw: net.ParseIP("fd00::1"), Priority: 1024},
			agentproto.Route{Family: 6, Gateway: "fd00::1", Device: "eth0", Metric: 1024}},
		{"device route with a source", netlink.Route{Family: netlink.FAMILY_V4, Dst: cidr("10.9.0.0/16"), Src: net.ParseIP("10.0.0.2"), Scope: netlink.SCOPE_LINK},
			agentproto.Route{Family: 4, Destination: "10.9.0.0/16", Source: "10.0.0.2", Scope: int(netlink.SCOPE_LINK), Device: "eth0"}},
		{"route MTU", netlink.Route{Family: netlink.FAMILY_V4, Dst: cidr("10.8.0.0/16"), Gw: net.ParseIP("10.0.0.1"), MTU: 1300},
			agentproto.Route{Family: 4, Destination: "10.8.0.0/16", Gateway: "10.0.0.1", MTU: 1300, Device: "eth0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := wireRoute(tc.r, "eth0"); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
