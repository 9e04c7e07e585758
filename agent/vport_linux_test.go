package agent

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/runv-project/runv/api/agentproto"
)

func TestPortsInOrder(t *testing.T) {
	names := []string{agentproto.ControlPortName, agentproto.StreamPortName}
	for _, tc := range []struct {
		name  string
		ports map[string]string // sysfs port directory -> its name file
		nodes []string          // device nodes present
		want  []string          // nil: not in runv's order, the scan decides
	}{
		{"runv's order", map[string]string{"vport0p1": agentproto.ControlPortName + "\n", "vport0p2": agentproto.StreamPortName + "\n"},
			[]string{"vport0p1", "vport0p2"}, []string{"vport0p1", "vport0p2"}},
		{"swapped", map[string]string{"vport0p1": agentproto.StreamPortName + "\n", "vport0p2": agentproto.ControlPortName + "\n"},
			[]string{"vport0p1", "vport0p2"}, nil},
		{"on another device", map[string]string{"vport1p1": agentproto.ControlPortName + "\n", "vport1p2": agentproto.StreamPortName + "\n"},
			[]string{"vport1p1", "vport1p2"}, nil},
		{"not named yet", map[string]string{"vport0p1": agentproto.ControlPortName + "\n", "vport0p2": ""},
			[]string{"vport0p1", "vport0p2"}, nil},
		{"no device node yet", map[string]string{"vport0p1": agentproto.ControlPortName + "\n", "vport0p2": agentproto.StreamPortName + "\n"},
			[]string{"vport0p1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			class, dev := t.TempDir(), t.TempDir()
			for port, name := range tc.ports {
				if err := os.MkdirAll(filepath.Join(class, port), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(class, port, "name"), []byte(name), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range tc.nodes {
				if err := os.WriteFile(filepath.Join(dev, n), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, ok := portsInOrder(class, dev, names)
			var want []string
			for _, w := range tc.want {
				want = append(want, filepath.Join(dev, w))
			}
			if ok != (tc.want != nil) || !slices.Equal(got, want) {
				t.Errorf("portsInOrder = %v, %v; want %v", got, ok, want)
			}
		})
	}
}
