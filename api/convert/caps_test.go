package convert

import (
	"encoding/binary"
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

// The sets name every capability capNames knows; the request carries those up to the
// guest kernel's last, as libcontainer ignores the names its kernel does not know.
func TestCapSetsMaskedByTheLastCap(t *testing.T) {
	sets := CapSetsOf(&configs.Capabilities{
		Bounding:  []string{"CAP_CHOWN", "CAP_KILL", "CAP_NOT_A_CAPABILITY"},
		Effective: []string{"CAP_CHECKPOINT_RESTORE"},
		Ambient:   []string{"CAP_NET_RAW", "CAP_NET_RAW"},
	})
	if sets.Bounding != 1<<0|1<<5 || sets.Ambient != 1<<13 || sets.Permitted != 0 || sets.Inheritable != 0 || sets.Effective != 1<<40 {
		t.Errorf("sets %+v", *sets)
	}
	for _, tc := range []struct {
		last      uint32
		effective uint64
	}{{40, 1 << 40}, {39, 0}, {63, 1 << 40}} {
		r := &ExecRequest{Args: []string{"true"}, ConsoleFD: -1, Caps: sets, LastCap: tc.last}
		b, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		f := requestFields(t, b)[tagCaps][0]
		if got := binary.LittleEndian.Uint64(f[8:]); got != tc.effective {
			t.Errorf("last capability %d: effective %#x, want %#x", tc.last, got, tc.effective)
		}
		if got := binary.LittleEndian.Uint32(f[40:]); got != tc.last {
			t.Errorf("last capability %d sent as %d", tc.last, got)
		}
	}
}
