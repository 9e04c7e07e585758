package oci

import (
	"errors"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/runv-project/runv/errdefs"
)

func TestVMSize(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	withRes := func(r *specs.LinuxResources) *specs.Spec {
		return &specs.Spec{Linux: &specs.Linux{Resources: r}}
	}
	tests := []struct {
		name      string
		spec      *specs.Spec
		cpus, mem int
	}{
		{"nil spec", nil, 0, 0},
		{"no linux", &specs.Spec{}, 0, 0},
		{"no resources", &specs.Spec{Linux: &specs.Linux{}}, 0, 0},
		{"memory limit", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(512 << 20)}}), 0, 512},
		{"memory limit rounded up", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(512<<20 + 1)}}), 0, 513},
		{"unlimited memory", withRes(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}}), 0, 0},
		{"quota of two cpus", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000)}}), 2, 0},
		{"fractional quota rounds up", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(150000), Period: u64(100000)}}), 2, 0},
		{"unlimited quota", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(100000)}}), 0, 0},
		{"quota without period", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(200000)}}), 0, 0},
		{"cpuset needs its highest cpu", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0,2-3"}}), 4, 0},
		{"cpuset beats a smaller quota", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-2", Quota: i64(50000), Period: u64(100000)}}), 3, 0},
		{"quota beats a smaller cpuset", withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0", Quota: i64(300000), Period: u64(100000)}}), 3, 0},
		{"both", withRes(&specs.LinuxResources{
			CPU:    &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000)},
			Memory: &specs.LinuxMemory{Limit: i64(1 << 30)},
		}), 2, 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cpus, mem, err := VMSize(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if cpus != tt.cpus || mem != tt.mem {
				t.Errorf("VMSize = %d vCPUs, %d MiB; want %d, %d", cpus, mem, tt.cpus, tt.mem)
			}
		})
	}
	for _, bad := range []string{"a", "3-1", "-1", "1,,2"} {
		_, _, err := VMSize(withRes(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: bad}}))
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("cpus %q: %v, want ErrInvalidArgument", bad, err)
		}
	}
}
