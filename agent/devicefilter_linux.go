package agent

import (
	"fmt"
	"strconv"
	"sync"
	"unicode/utf8"
	"unsafe"

	"github.com/opencontainers/cgroups"
	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Every container's cgroup gets a device filter: an eBPF program that libcontainer generates
// from the container's device rules, loads (BPF_PROG_LOAD: the kernel's verifier walks it)
// and attaches to the cgroup. Under TCG a guest's first load runs the verifier's code for the
// first time: 20-40 ms of a cold guest's or a template clone's first container, against 3 ms
// once translated (docs/performance.md). A program depends on nothing but the rules it was
// generated from and holds no state (no maps), so one loaded program can be attached to any
// number of cgroups with the same rules, and the agent keeps the programs it loaded: a
// container whose rules were seen before gets the same program attached, without a load.
// The warm-up's container loads the one for runc's default rules; a template saves it with
// the agent's memory, so every clone has it loaded already.

// maxDeviceFilters bounds the programs kept: each is an fd and a few KiB of kernel memory,
// and the rules come from the host's specs, which may all differ.
const maxDeviceFilters = 16

// deviceFilters attaches kept programs, and loads (through libcontainer) the others.
type deviceFilters struct {
	// load is libcontainer's cgroups.DevicesSetV2: generates, loads and attaches.
	load func(dir string, r *cgroups.Resources) error

	mu    sync.Mutex
	progs map[string]int // rules key → the program's fd, held by the agent
	// ids receives BPF_PROG_QUERY's answer. The kernel writes it through a pointer held as
	// an integer, so it lives on the heap, where Go never moves memory (a stack may be
	// copied between taking the address and the system call).
	ids [8]uint32
}

// installDeviceFilters puts a deviceFilters in front of libcontainer's cgroup v2 device
// setter, for every cgroup manager in this process (the create engine's and libcontainer's).
func installDeviceFilters() {
	if cgroups.DevicesSetV2 == nil {
		return // devices not supported by this libcontainer: nothing to keep
	}
	f := &deviceFilters{load: cgroups.DevicesSetV2, progs: make(map[string]int)}
	cgroups.DevicesSetV2 = f.set
}

func (f *deviceFilters) set(dir string, r *cgroups.Resources) error {
	if r.SkipDevices {
		return f.load(dir, r)
	}
	key := deviceRulesKey(r.Devices)
	f.mu.Lock()
	defer f.mu.Unlock()
	prog, kept := f.progs[key]
	if !kept && len(f.progs) >= maxDeviceFilters {
		return f.load(dir, r)
	}
	// One fd of the cgroup for the query, the attach or the look-up of what was loaded.
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return f.load(dir, r) // libcontainer reports it
	}
	defer unix.Close(fd)
	if kept {
		// Only on a cgroup that has no filter yet (a new container's): a cgroup whose rules
		// change (an update) goes through libcontainer, which replaces the old program.
		attached, err := f.attachIfNone(fd, prog)
		if err == nil && attached {
			// A trace step with runv.trace=1 (libcontainer's debug lines go there).
			logrus.Debugf("device filter: the program kept for these rules attached")
			return nil
		}
		if err != nil {
			logrus.Warnf("device filter of %s: %v; loading one", dir, err)
		}
	}
	if err := f.load(dir, r); err != nil {
		return err
	}
	if !kept {
		if prog, err := f.attachedDeviceFilter(fd); err == nil {
			f.progs[key] = prog
		}
	}
	return nil
}

// deviceRulesKey identifies the program libcontainer generates for rules: the rules in
// their order, which the program follows ("c 1:3 rwm true;" each).
func deviceRulesKey(rules []*devices.Rule) string {
	b := make([]byte, 0, 20*len(rules))
	for _, r := range rules {
		b = utf8.AppendRune(b, rune(r.Type))
		b = strconv.AppendInt(append(b, ' '), r.Major, 10)
		b = strconv.AppendInt(append(b, ':'), r.Minor, 10)
		b = append(append(append(b, ' '), r.Permissions...), ' ')
		b = append(strconv.AppendBool(b, r.Allow), ';')
	}
	return string(b)
}

// attachIfNone attaches prog to the cgroup fd as libcontainer does (BPF_F_ALLOW_MULTI),
// unless a device filter is attached there already (false).
func (f *deviceFilters) attachIfNone(cgroupFd, prog int) (bool, error) {
	ids, err := f.queryDeviceFilters(cgroupFd)
	if err != nil || len(ids) > 0 {
		return false, err
	}
	attr := struct {
		targetFd, attachBpfFd, attachType, attachFlags uint32
	}{uint32(cgroupFd), uint32(prog), unix.BPF_CGROUP_DEVICE, unix.BPF_F_ALLOW_MULTI}
	if _, err := bpfCall(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return false, fmt.Errorf("attach device filter: %w", err)
	}
	return true, nil
}

// attachedDeviceFilter returns an fd of the one device filter attached to the cgroup fd.
func (f *deviceFilters) attachedDeviceFilter(cgroupFd int) (int, error) {
	ids, err := f.queryDeviceFilters(cgroupFd)
	if err != nil {
		return -1, err
	}
	if len(ids) != 1 {
		return -1, fmt.Errorf("%d device filters attached, expected one", len(ids))
	}
	attr := struct{ id uint32 }{ids[0]}
	// bpf(2) makes its fds close-on-exec: containers do not inherit the kept programs.
	prog, err := bpfCall(unix.BPF_PROG_GET_FD_BY_ID, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	return int(prog), err
}

// queryDeviceFilters lists the ids of the device filters attached to the cgroup fd. The
// caller holds f.mu.
func (f *deviceFilters) queryDeviceFilters(cgroupFd int) ([]uint32, error) {
	ids := f.ids[:]
	attr := struct {
		targetFd, attachType, queryFlags, attachFlags uint32
		progIDs                                       uint64
		progCount                                     uint32
		_                                             uint32
	}{targetFd: uint32(cgroupFd), attachType: unix.BPF_CGROUP_DEVICE,
		progIDs: uint64(uintptr(unsafe.Pointer(&ids[0]))), progCount: uint32(len(ids))}
	if _, err := bpfCall(unix.BPF_PROG_QUERY, unsafe.Pointer(&attr), unsafe.Sizeof(attr)); err != nil {
		return nil, fmt.Errorf("query device filters: %w", err)
	}
	return append([]uint32(nil), ids[:min(attr.progCount, uint32(len(ids)))]...), nil
}

func bpfCall(cmd uintptr, attr unsafe.Pointer, size uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}
