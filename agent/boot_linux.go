package agent

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// libcontainerRoot is libcontainer's state directory. It must not be on the filesystem
// that holds the agent binary (the initramfs): libcontainer protects /proc/self/exe with a
// read-only overlay whose lower layer is its state dir, and an overlapping one makes it fall
// back to copying the 7 MB binary into a memfd for every container (3x slower starts).
// /run is a tmpfs of its own.
const libcontainerRoot = "/run/lc"

// mountSpec is one mount of the guest's base filesystem tree.
type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// baseMounts come after the switch root, in order. cgroup2 must be mounted before anything
// calls libcontainer: cgroups.IsCgroup2UnifiedMode() caches its first answer for good.
var baseMounts = []mountSpec{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	// nsdelegate: cgroup namespaces of containers become delegation boundaries. No
	// controller is enabled here: libcontainer's fs2 manager writes subtree_control itself.
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RELATIME, "nsdelegate"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// setupRoot prepares the guest's filesystem tree. Order matters:
//  1. devtmpfs on /dev (the console and the virtio ports live there);
//  2. the switch root, before anything else is mounted: bind the initramfs onto /newroot
//     and move that over "/". The root then is a mount with a parent, which pivot_root(2)
//     accepts; on the bare initramfs every container start fails with "pivot_root: invalid
//     argument". Zero copy and no re-exec (~2 ms), unlike the classic switch_root;
//  3. the base mounts (proc, sys, cgroup2, devpts, /run, /dev/shm).
func setupRoot(log *logger) error {
	start := time.Now()
	if err := mkdirMount(mountSpec{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"}); err != nil &&
		!errors.Is(err, unix.EBUSY) {
		return err
	}
	if err := switchRoot(); err != nil {
		return err
	}
	switched := time.Since(start)
	for _, m := range baseMounts {
		if err := mkdirMount(m); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(libcontainerRoot, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", libcontainerRoot, err)
	}
	// Tools that run in the guest's own namespaces expect /dev/ptmx to follow /dev/pts.
	_ = os.Remove("/dev/ptmx")
	_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	log.Debugf("root set up: switch root %s, all mounts %s", switched.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
	return nil
}

func switchRoot() error {
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"bind / on " + newRoot, func() error { return unix.Mount("/", newRoot, "", unix.MS_BIND, "") }},
		{"move /dev", func() error { return unix.Mount("/dev", newRoot+"/dev", "", unix.MS_MOVE, "") }},
		{"chdir " + newRoot, func() error { return unix.Chdir(newRoot) }},
		{"move " + newRoot + " to /", func() error { return unix.Mount(".", "/", "", unix.MS_MOVE, "") }},
		{"chroot", func() error { return unix.Chroot(".") }},
		{"chdir /", func() error { return unix.Chdir("/") }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("switch root: %s: %w", s.what, err)
		}
	}
	return nil
}

func mkdirMount(m mountSpec) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

// openConsole reopens /dev/console (the kernel's fds 0-2 may be missing if the initramfs
// lacked the node) and makes it stdout and stderr, so that a Go runtime crash lands in the
// console log too. stdin becomes /dev/null: nothing reads the console.
func openConsole() (*os.File, error) {
	c, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/console: %w", err)
	}
	if null, err := os.Open("/dev/null"); err == nil {
		_ = unix.Dup3(int(null.Fd()), 0, 0)
		null.Close()
	}
	_ = unix.Dup3(int(c.Fd()), 1, 0)
	_ = unix.Dup3(int(c.Fd()), 2, 0)
	return c, nil
}

// readCmdline returns the kernel command line's agent flags.
func readCmdline() (bootFlags, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return bootFlags{}, fmt.Errorf("read kernel command line: %w", err)
	}
	return parseCmdline(string(b)), nil
}
