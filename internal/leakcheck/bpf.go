package leakcheck

import (
	"syscall"
	"testing"

	"github.com/cilium/ebpf/link"
)

// NetnsBPFLinks counts the BPF links attached to the network namespace at nsPath (runv's
// port-forward steering is one): a namespace runv is done with must have none of its.
func NetnsBPFLinks(t testing.TB, nsPath string) int {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(nsPath, &st); err != nil {
		t.Fatalf("network namespace %s: %v", nsPath, err)
	}
	count := 0
	var it link.Iterator
	for it.Next() {
		if info, err := it.Link.Info(); err == nil && info.NetNs() != nil && uint64(info.NetNs().NetnsIno) == st.Ino {
			count++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("list BPF links: %v", err)
	}
	return count
}
