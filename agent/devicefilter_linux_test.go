package agent

import (
	"testing"

	devices "github.com/opencontainers/cgroups/devices/config"
)

// Two rule lists share a kept program only if libcontainer would generate the same one from
// them: same rules, same order.
func TestDeviceRulesKey(t *testing.T) {
	null := &devices.Rule{Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rwm", Allow: true}
	denyAll := &devices.Rule{Type: devices.WildcardDevice, Major: -1, Minor: -1, Permissions: "rwm", Allow: false}
	base := []*devices.Rule{denyAll, null}
	tests := []struct {
		name  string
		other []*devices.Rule
		same  bool
	}{
		{"equal rules", []*devices.Rule{{Type: devices.WildcardDevice, Major: -1, Minor: -1, Permissions: "rwm"}, {Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rwm", Allow: true}}, true},
		{"other order", []*devices.Rule{null, denyAll}, false},
		{"other minor", []*devices.Rule{denyAll, {Type: devices.CharDevice, Major: 1, Minor: 5, Permissions: "rwm", Allow: true}}, false},
		{"other major", []*devices.Rule{denyAll, {Type: devices.CharDevice, Major: 5, Minor: 3, Permissions: "rwm", Allow: true}}, false},
		{"block instead of char", []*devices.Rule{denyAll, {Type: devices.BlockDevice, Major: 1, Minor: 3, Permissions: "rwm", Allow: true}}, false},
		{"fewer permissions", []*devices.Rule{denyAll, {Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rw", Allow: true}}, false},
		{"denied instead of allowed", []*devices.Rule{denyAll, {Type: devices.CharDevice, Major: 1, Minor: 3, Permissions: "rwm"}}, false},
		{"one rule more", []*devices.Rule{denyAll, null, null}, false},
		{"no rules", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := deviceRulesKey(base) == deviceRulesKey(tt.other); got != tt.same {
				t.Errorf("same key = %v, want %v (%q against %q)", got, tt.same, deviceRulesKey(base), deviceRulesKey(tt.other))
			}
		})
	}
}
