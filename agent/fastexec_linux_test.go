package agent

import (
	"strings"
	"testing"

	"github.com/moby/sys/capability"
	"github.com/opencontainers/runc/libcontainer/configs"
)

// capNames is the capability package's list, in its numbering.
func TestCapNamesAreKnown(t *testing.T) {
	known := capability.ListKnown()
	if len(known) != len(capNames) {
		t.Errorf("the capability package knows %d capabilities, capNames %d", len(known), len(capNames))
	}
	for _, k := range known {
		want := "CAP_" + strings.ToUpper(k.String())
		if int(k) >= len(capNames) || capNames[k] != want {
			t.Errorf("capability %d is %s, not in capNames at its number", int(k), want)
		}
	}
}

func TestCapsForMasks(t *testing.T) {
	sets, last, err := capsFor(&configs.Capabilities{
		Bounding:  []string{"CAP_CHOWN", "CAP_KILL", "CAP_NOT_A_CAPABILITY"},
		Effective: []string{"CAP_CHECKPOINT_RESTORE"},
		Ambient:   []string{"CAP_NET_RAW", "CAP_NET_RAW"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sets.bounding != 1<<0|1<<5 || sets.ambient != 1<<13 || sets.permitted != 0 || sets.inheritable != 0 {
		t.Errorf("sets %+v", *sets)
	}
	// A capability the kernel does not have is left out.
	wantEffective := uint64(0)
	if last >= 40 {
		wantEffective = 1 << 40
	}
	if sets.effective != wantEffective {
		t.Errorf("effective %#x, want %#x (last capability %d)", sets.effective, wantEffective, last)
	}
}

// lastCap finds what the kernel's cap_last_cap says, which moby's capability package reads.
func TestLastCapIsTheKernels(t *testing.T) {
	want, err := capability.LastCap()
	if err != nil {
		t.Fatal(err)
	}
	got, err := lastCap()
	if err != nil || got != want {
		t.Errorf("lastCap() = %d, %v; cap_last_cap says %d", got, err, want)
	}
}
