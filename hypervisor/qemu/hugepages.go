package qemu

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Transparent huge pages are off for every QEMU runv starts. QEMU asks for them
// (MADV_HUGEPAGE) on the guest's RAM and on TCG's translation buffer, so each first touch of
// a 2 MiB region has the host kernel allocate and zero 2 MiB. On a host whose free memory
// goes back to its own hypervisor (a cloud VM with free page reporting: this one), that
// memory has to be faulted in again from the hypervisor first, and the cost of a boot's
// ~8 000 faults swung from 50 ms to over a second from run to run. With 4 KiB pages only
// the pages the guest and TCG touch are zeroed: measured interleaved on the same machine,
// a direct pod's QEMU system time 60-680 ms became 80-110 ms, with the same user time
// (docs/performance.md, "Huge pages off, stop 14").
//
// PR_SET_THP_DISABLE belongs to the whole process and is inherited over fork and kept over
// execve: there is no way to set it between Go's fork and QEMU's exec, so the process that
// starts QEMU sets it on itself, once (its own heap is small and gains nothing from huge
// pages either).
var hugePagesOff = sync.OnceValue(func() error {
	return unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0)
})

// DisableHugePages turns transparent huge pages off for this process and whatever it
// starts from now on, as runv does before starting QEMU. A measurement that starts QEMU
// itself from CommandLine calls it to boot the machine as runv boots it. An error means the
// kernel does not support the setting (before Linux 3.15): QEMU then runs with huge pages,
// slower on some hosts but correct.
func DisableHugePages() error { return hugePagesOff() }
