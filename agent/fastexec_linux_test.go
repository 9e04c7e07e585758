package agent

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

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

// A report pipe's read returns what was written, EOF once the writer is gone, and
// os.ErrDeadlineExceeded once its deadline passed with nothing to read.
func TestReportPipeDeadline(t *testing.T) {
	r, w, err := newReportPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 8)
	if n, err := r.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of an empty pipe past its deadline = %d, %v; want os.ErrDeadlineExceeded", n, err)
	}
	r.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := w.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("read = %q, %v; want \"ok\"", buf[:n], err)
	}
	w.Close()
	r.SetReadDeadline(time.Time{})
	if n, err := r.Read(buf); err != io.EOF {
		t.Fatalf("read after the writer closed = %d, %v; want EOF", n, err)
	}
}
