package convert

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	_ "unsafe" // go:linkname

	"github.com/cilium/ebpf/asm"
	_ "github.com/opencontainers/cgroups/devices" // libcontainerDeviceFilter's package
	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// libcontainerDeviceFilter is libcontainer's generator, which DeviceProgram replaces: the
// reference the test holds it to (unexported there, hence the linkname).
//
//go:linkname libcontainerDeviceFilter github.com/opencontainers/cgroups/devices.deviceFilter
func libcontainerDeviceFilter(rules []*devices.Rule) (asm.Instructions, string, error)

// libcontainersProgram is what libcontainer would load for rules, or its refusal.
func libcontainersProgram(rules []*devices.Rule) ([]byte, error) {
	insns, _, err := libcontainerDeviceFilter(rules)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := insns.Marshal(&b, binary.LittleEndian); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func checkDeviceProgram(t *testing.T, name string, rules []*devices.Rule) {
	t.Helper()
	want, wantErr := libcontainersProgram(rules)
	got, ok := DeviceProgram(rules)
	switch {
	case wantErr != nil && ok:
		t.Errorf("%s: libcontainer refuses the rules (%v), DeviceProgram compiles them", name, wantErr)
	case wantErr == nil && !ok:
		t.Errorf("%s: DeviceProgram refuses rules libcontainer compiles", name)
	case !bytes.Equal(got, want):
		t.Errorf("%s: programs differ\n got %x\nwant %x", name, got, want)
	}
}

// specRules are the device rules specconv makes of a spec's (runc's default devices and
// the spec's own rules), the rules a container's cgroup gets.
func specRules(t *testing.T, spec *specs.Spec) []*devices.Rule {
	t.Helper()
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: "c", Spec: spec}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cg.Resources.Devices
}

func TestDeviceProgramIsLibcontainers(t *testing.T) {
	rule := func(typ devices.Type, major, minor int64, perms string, allow bool) *devices.Rule {
		return &devices.Rule{Type: typ, Major: major, Minor: minor, Permissions: devices.Permissions(perms), Allow: allow}
	}
	const c, b, a, w = devices.CharDevice, devices.BlockDevice, devices.WildcardDevice, devices.Wildcard
	runcDefault := specconv.Example()
	allowAll := specconv.Example()
	allowAll.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	fuse := specconv.Example()
	major, minor := int64(10), int64(229)
	fuse.Linux.Resources.Devices = append(fuse.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rw"})
	tests := []struct {
		name  string
		rules []*devices.Rule
	}{
		{"runc's default spec", specRules(t, runcDefault)},
		{"every device allowed (privileged)", specRules(t, allowAll)},
		{"an extra device, read and write", specRules(t, fuse)},
		{"no rules", nil},
		{"deny all", []*devices.Rule{rule(a, w, w, "rwm", false)}},
		{"allow all", []*devices.Rule{rule(a, w, w, "rwm", true)}},
		{"allow all with r only (the access of 'a' is ignored)", []*devices.Rule{rule(a, w, w, "r", true)}},
		{"deny list with exceptions", []*devices.Rule{rule(a, w, w, "rwm", true), rule(c, 1, 3, "w", false), rule(b, 8, w, "m", false)}},
		{"allow list, wildcards", []*devices.Rule{rule(a, w, w, "rwm", false), rule(c, w, w, "m", true), rule(b, w, w, "m", true), rule(c, 136, w, "rwm", true), rule(c, 5, 2, "rwm", true)}},
		{"merged accesses", []*devices.Rule{rule(c, 1, 3, "r", true), rule(c, 1, 3, "w", true), rule(c, 1, 3, "mr", true)}},
		{"removed again", []*devices.Rule{rule(c, 1, 3, "rwm", true), rule(c, 1, 3, "rw", false)}},
		{"removed entirely", []*devices.Rule{rule(c, 1, 3, "rwm", true), rule(c, 1, 3, "rwm", false)}},
		{"a hole in a wildcard", []*devices.Rule{rule(c, w, w, "rwm", true), rule(c, 1, 3, "r", false)}},
		{"a hole in a major's wildcard", []*devices.Rule{rule(c, 1, w, "rwm", true), rule(c, 1, 3, "r", false)}},
		{"a disjoint access next to a wildcard", []*devices.Rule{rule(c, w, w, "m", true), rule(c, 1, 3, "r", false)}},
		{"reset by a later 'a'", []*devices.Rule{rule(c, 1, 3, "rwm", true), rule(a, w, w, "rwm", false), rule(c, 1, 5, "r", true)}},
		{"empty access", []*devices.Rule{rule(c, 1, 3, "", true)}},
		{"unknown letters", []*devices.Rule{rule(c, 1, 3, "rxq", true)}},
		{"fifo", []*devices.Rule{rule(devices.FifoDevice, 1, 3, "rwm", true)}},
		{"unknown type", []*devices.Rule{rule('z', 1, 3, "rwm", true)}},
		{"major beyond 32 bits", []*devices.Rule{rule(c, math.MaxUint32+1, 3, "rwm", true)}},
		{"the largest major and minor", []*devices.Rule{rule(c, math.MaxUint32, math.MaxUint32, "rwm", true)}},
		{"negative numbers other than the wildcard", []*devices.Rule{rule(c, -5, -7, "rw", true)}},
		{"ordered by major, minor, type", []*devices.Rule{rule(c, 5, 1, "r", true), rule(b, 5, 1, "r", true), rule(c, 1, 9, "r", true), rule(c, w, 2, "r", true), rule(b, 1, w, "w", true)}},
	}
	for _, tt := range tests {
		checkDeviceProgram(t, tt.name, tt.rules)
	}

	// Random rule lists from a small set of devices, so that rules meet and overlap.
	rng := rand.New(rand.NewPCG(13, 42))
	types := []devices.Type{a, b, c, c, c}
	numbers := []int64{w, 1, 3, 5}
	accesses := []string{"r", "w", "m", "rw", "rwm", "wm", ""}
	for i := range 3000 {
		rules := make([]*devices.Rule, rng.IntN(8))
		for j := range rules {
			rules[j] = rule(types[rng.IntN(len(types))], numbers[rng.IntN(len(numbers))], numbers[rng.IntN(len(numbers))],
				accesses[rng.IntN(len(accesses))], rng.IntN(2) == 0)
		}
		checkDeviceProgram(t, fmt.Sprintf("random list %d %v", i, describeRules(rules)), rules)
	}
}

func describeRules(rules []*devices.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = fmt.Sprintf("%c %d:%d %s %t", r.Type, r.Major, r.Minor, r.Permissions, r.Allow)
	}
	return out
}
