package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/runv-project/runv/internal/mounts"
)

// QEMU is the process a guest that breaks out of its kernel holds, so it runs with as
// little as it needs (docs/reliability.md, "Blast radius"):
//
//   - -sandbox (args.go): QEMU's seccomp filter, which also sets no_new_privs;
//   - not as root: as qemuUID/qemuGID, holding only the capabilities 9p passthrough needs to
//     serve the pod's files with their owners and modes and to create its taps (qemuCaps),
//     none of the others (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_KILL, CAP_SYS_MODULE...);
//   - in a cgroup of its own under qemuCgroupParent, created at fork (clone3 with
//     CLONE_INTO_CGROUP) and removed once QEMU is reaped.
//
// Only a root launcher can confine; tests and tools running as another user start QEMU as
// themselves.

// The user and group QEMU runs as: nobody/nogroup, which owns nothing QEMU could use. Files
// the guest creates over 9p are created by this user and then chowned to the guest's
// owner (security_model=none with CAP_CHOWN), so ownership in the share stays the guest's.
const (
	qemuUID = 65534
	qemuGID = 65534
)

// qemuCaps are what the 9p server needs on the pod's files, whoever owns them: read and
// write them (DAC_OVERRIDE, DAC_READ_SEARCH), give them the guest's owner (CHOWN) and
// modes and times (FOWNER, FSETID: setuid bits survive a chown). Measured: without CHOWN a
// file a guest root creates is owned by nobody on the host and chown(2) in the guest fails
// with EPERM; without DAC_OVERRIDE QEMU cannot even create its pid file in the VM's
// directory (0700, root's). Not MKNOD: device nodes and FIFOs cannot be made over the
// share anyway (QEMU 7.2's 9p answers ENXIO, with or without it).
//
// NET_ADMIN attaches QEMU to the NICs' taps (made for it, nic.go: a tap without an owner
// takes only a process with NET_ADMIN) and creates a hot-plugged NIC's. QEMU starts in a network namespace of its own
// and cannot enter another (no CAP_SYS_ADMIN), so it administers only that empty namespace
// and the taps it holds once they moved to the pod's.
var qemuCaps = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH,
	unix.CAP_FOWNER, unix.CAP_FSETID, unix.CAP_NET_ADMIN,
}

// qemuCgroupParent is the cgroup v2 directory under which each QEMU gets its own.
const qemuCgroupParent = "runv-qemu"

// confinement is what startProcess applies to a QEMU, and undoes after it exited.
type confinement struct {
	cgroupDir string // removed once QEMU is reaped
	cgroupFD  int
}

// confining reports whether QEMU is confined: only a root launcher can.
func confining() bool { return os.Geteuid() == 0 }

// confine fills attr so that the child is confined, and returns what to undo. name names
// the VM (its cgroup).
func confine(attr *syscall.SysProcAttr, name string) (*confinement, error) {
	c := &confinement{cgroupFD: -1}
	if !confining() {
		return c, nil
	}
	attr.Credential = &syscall.Credential{Uid: qemuUID, Gid: qemuGID, Groups: []uint32{}}
	attr.AmbientCaps = qemuCaps
	root, err := cgroup2Root()
	if err != nil {
		return nil, err
	}
	if root == "" {
		return c, nil // no cgroup v2 hierarchy on this host: QEMU stays in ours
	}
	sweepCgroups(filepath.Join(root, qemuCgroupParent))
	c.cgroupDir = filepath.Join(root, qemuCgroupParent, cgroupName(name))
	if err := os.MkdirAll(c.cgroupDir, 0o755); err != nil {
		return nil, fmt.Errorf("create qemu cgroup: %w", err)
	}
	fd, err := unix.Open(c.cgroupDir, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(c.cgroupDir)
		return nil, fmt.Errorf("open qemu cgroup: %w", err)
	}
	c.cgroupFD = fd
	attr.UseCgroupFD, attr.CgroupFD = true, fd
	return c, nil
}

// started releases what the parent no longer needs once QEMU runs (or failed to start).
func (c *confinement) started() {
	if c.cgroupFD >= 0 {
		unix.Close(c.cgroupFD)
		c.cgroupFD = -1
	}
}

// exited removes QEMU's cgroup after QEMU was reaped.
func (c *confinement) exited() {
	c.started()
	if c.cgroupDir == "" {
		return
	}
	// Empty once QEMU is reaped; the kernel may take a moment to see the last task go.
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := unix.Rmdir(c.cgroupDir)
		if err == nil || err == unix.ENOENT || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var cgroupSeq atomic.Uint64

var unsafeCgroupChars = regexp.MustCompile(`[^A-Za-z0-9_.+-]`)

// cgroupName is unique among the QEMUs of this host: the VM's name, our pid and a counter.
func cgroupName(vm string) string {
	vm = unsafeCgroupChars.ReplaceAllString(vm, "_")
	if len(vm) > 64 {
		vm = vm[:64]
	}
	return vm + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(cgroupSeq.Add(1), 10)
}

// cgroup2Root returns where the cgroup v2 hierarchy is mounted ("" if nowhere): the
// unified hierarchy of a v2 host, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() (string, error) {
	table, err := mounts.Table()
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 hierarchy: %w", err)
	}
	for _, m := range table {
		if m.FSType == "cgroup2" {
			return m.MountPoint, nil
		}
	}
	return "", nil
}

// sweepCgroups removes the QEMU cgroups under parent whose launcher is gone: a launcher
// killed with SIGKILL (its QEMU dies with it, Pdeathsig) never removes its QEMU's cgroup.
// The launcher's pid is in the name (cgroupName); a cgroup of a live launcher is left
// alone, even if empty (it may be about to fork into it), and rmdir refuses a populated one.
func sweepCgroups(parent string) {
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		parts := strings.Split(e.Name(), "-")
		if !e.IsDir() || len(parts) < 3 {
			continue
		}
		pid, err := strconv.Atoi(parts[len(parts)-2])
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, fs.ErrNotExist) {
			unix.Rmdir(filepath.Join(parent, e.Name()))
		}
	}
}
