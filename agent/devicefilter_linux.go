package agent

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/opencontainers/cgroups"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/api/convert"
)

// Every container's cgroup gets a device filter: an eBPF program generated from the
// container's device rules, loaded (BPF_PROG_LOAD: the kernel's verifier walks it) and
// attached to the cgroup. Under TCG a guest's first load runs the verifier's code for the
// first time: 20-40 ms of a cold guest's or a template clone's first container, against 3 ms
// once translated (docs/performance.md). A program depends on nothing but the rules it was
// generated from and holds no state (no maps), so one loaded program can be attached to any
// number of cgroups, and the agent keeps the programs it loaded: a container whose rules
// compile to a program seen before gets the same program attached, without a load.
// The warm-up's container loads the one for runc's default rules; a template saves it with
// the agent's memory, so every clone has it loaded already.
//
// A new cgroup's program is generated (convert.DeviceProgram: libcontainer's, byte for byte),
// loaded and attached here; libcontainer's own setter, which also probes the kernel for
// BPF_F_REPLACE with a program of its own (a second verifier run in a cold guest), replaces
// the filter of a cgroup that has one (an update) and does whatever this refuses, so that
// its errors are what a user sees.

// maxDeviceFilters bounds the programs kept: each is an fd and a few KiB of kernel memory,
// and the rules come from the host's specs, which may all differ.
const maxDeviceFilters = 16

// deviceFilters attaches kept programs, and generates and loads the others.
type deviceFilters struct {
	// load is libcontainer's cgroups.DevicesSetV2: generates, loads and attaches, replacing
	// the program of a cgroup that has one.
	load func(dir string, r *cgroups.Resources) error

	mu    sync.Mutex
	progs map[string]int // the program's instructions → its fd, held by the agent
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
	theDeviceFilters = &deviceFilters{load: cgroups.DevicesSetV2, progs: make(map[string]int)}
	cgroups.DevicesSetV2 = theDeviceFilters.set
}

// theDeviceFilters is the guest's deviceFilters, nil until installDeviceFilters.
var theDeviceFilters *deviceFilters

func (f *deviceFilters) set(dir string, r *cgroups.Resources) error {
	if r.SkipDevices {
		return f.load(dir, r)
	}
	insns, ok := convert.DeviceProgram(r.Devices)
	if !ok {
		return f.load(dir, r)
	}
	return f.setProgram(dir, r, insns, false)
}

// setProgram attaches insns, the program r's device rules compile to, to the cgroup dir.
// fresh: the caller made dir and attached nothing to it (no BPF_PROG_QUERY needed: ~40
// blocks of the kernel's code a cold guest would translate for this one call).
func (f *deviceFilters) setProgram(dir string, r *cgroups.Resources, insns []byte, fresh bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return f.load(dir, r) // libcontainer reports it
	}
	defer unix.Close(fd)
	// Only a cgroup without a filter (a new container's): a cgroup whose rules change (an
	// update) goes through libcontainer, which replaces the old program.
	if fresh || f.hasNoDeviceFilter(fd) {
		kept, err := f.attachNew(fd, insns)
		if err == nil {
			if kept {
				// A trace step with runv.trace=1 (libcontainer's debug lines go there); not
				// for a new program, whose formatting would be the traced run's alone.
				logrus.Debugf("device filter: the program kept for these rules attached")
			}
			return nil
		}
		logrus.Debugf("device filter of %s: %v; libcontainer sets it", dir, err)
	}
	return f.load(dir, r)
}

// attachNew attaches a device filter program to a cgroup that has none, as libcontainer
// does (BPF_F_ALLOW_MULTI): the same program kept loaded (true), else the program loaded,
// then kept.
func (f *deviceFilters) attachNew(cgroupFd int, insns []byte) (bool, error) {
	prog, kept := f.progs[string(insns)]
	if !kept {
		var err error
		if prog, err = loadDeviceProgram(insns); err != nil {
			return false, err
		}
	}
	attr := struct {
		targetFd, attachBpfFd, attachType, attachFlags uint32
	}{uint32(cgroupFd), uint32(prog), unix.BPF_CGROUP_DEVICE, unix.BPF_F_ALLOW_MULTI}
	_, err := bpfCall(unix.BPF_PROG_ATTACH, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	switch {
	case kept:
	case err == nil && len(f.progs) < maxDeviceFilters:
		f.progs[string(insns)] = prog
	default:
		unix.Close(prog) // attached, the cgroup holds it
	}
	if err != nil {
		return false, fmt.Errorf("attach device filter: %w", err)
	}
	return kept, nil
}

// deviceFilterLicense is the program's license (libcontainer's); a package variable, so
// that the address handed to the kernel as an integer never moves.
var deviceFilterLicense = []byte("Apache\x00")

// loadDeviceProgram loads a BPF_PROG_TYPE_CGROUP_DEVICE program (its instructions, which
// the caller keeps on the heap) and returns its fd, close-on-exec as every bpf(2) fd.
func loadDeviceProgram(insns []byte) (int, error) {
	attr := struct {
		progType, insnCnt uint32
		insns, license    uint64
	}{unix.BPF_PROG_TYPE_CGROUP_DEVICE, uint32(len(insns) / 8),
		uint64(uintptr(unsafe.Pointer(unsafe.SliceData(insns)))), uint64(uintptr(unsafe.Pointer(unsafe.SliceData(deviceFilterLicense))))}
	// The verifier gives up with EAGAIN when a signal arrives (libcontainer retries too).
	for range 30 {
		fd, err := bpfCall(unix.BPF_PROG_LOAD, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		runtime.KeepAlive(insns)
		if err != unix.EAGAIN {
			if err != nil {
				return -1, fmt.Errorf("load device filter: %w", err)
			}
			return int(fd), nil
		}
	}
	return -1, errors.New("load device filter: interrupted 30 times")
}

// hasNoDeviceFilter tells whether the cgroup fd has no device filter attached (false when
// the kernel cannot tell).
func (f *deviceFilters) hasNoDeviceFilter(cgroupFd int) bool {
	ids, err := f.queryDeviceFilters(cgroupFd)
	return err == nil && len(ids) == 0
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
