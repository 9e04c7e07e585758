package agent

import (
	"testing"

	"github.com/moby/sys/capability"
)

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
