package agent

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestMergeResources(t *testing.T) {
	mem := int64(64 << 20)
	pids := int64(10)
	shares := uint64(512)
	old := &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: &mem},
		Pids:    &specs.LinuxPids{Limit: &pids},
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	newMem := int64(128 << 20)
	out := mergeResources(old, &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: &newMem},
		CPU:     &specs.LinuxCPU{Shares: &shares},
		Devices: []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}},
	})
	if *out.Memory.Limit != newMem || *out.CPU.Shares != shares || *out.Pids.Limit != pids {
		t.Fatalf("merge: %+v", out)
	}
	if len(out.Devices) != 1 || out.Devices[0].Allow {
		t.Fatalf("devices changed by an update: %+v", out.Devices)
	}
	if *old.Memory.Limit != mem {
		t.Fatal("old resources modified")
	}
	if out := mergeResources(nil, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pids}}); *out.Pids.Limit != pids {
		t.Fatalf("merge onto nil: %+v", out)
	}
}
