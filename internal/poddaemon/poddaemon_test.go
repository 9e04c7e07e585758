package poddaemon

import (
	"testing"

	"github.com/runv-project/runv/factory"
	"github.com/runv-project/runv/hypervisor"
)

// The pod daemon prepares a direct boot's QEMU thread (Main) only for a pod whose first VM
// is booted directly, at the size it is booted with.
func TestDirectFirstVM(t *testing.T) {
	base := hypervisor.Config{CPUs: 1, MemoryMiB: 128}
	for _, c := range []struct {
		name    string
		factory string
		first   *factory.Request
		direct  bool
		cpus    int
	}{
		{"direct", factory.SettingDirect, &factory.Request{CPUs: 2}, true, 2},
		{"direct, below the default size", factory.SettingDirect, &factory.Request{}, true, 1},
		{"size not known yet", factory.SettingDirect, nil, false, 0},
		{"template", factory.SettingTemplate, &factory.Request{}, false, 0},
		{"cache", `[{"cache":2}]`, &factory.Request{}, false, 0},
		{"size without an entry of its own", `[{"cache":2,"cpu":1},{"cpu":4}]`, &factory.Request{CPUs: 3}, true, 3},
		{"size of a direct entry", `[{"cache":2,"cpu":1},{"cpu":4}]`, &factory.Request{CPUs: 4}, true, 4},
		{"size of a cache entry", `[{"cache":2,"cpu":1},{"cpu":4}]`, &factory.Request{CPUs: 1}, false, 0},
		{"policy that does not parse", `[{`, &factory.Request{}, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			cpus, direct := directFirstVM(Boot{Base: base, Factory: c.factory}, c.first)
			if direct != c.direct || cpus != c.cpus {
				t.Errorf("directFirstVM = %d vCPUs, %v; want %d, %v", cpus, direct, c.cpus, c.direct)
			}
		})
	}
}
